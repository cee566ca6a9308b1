// Compiles one of the contracts here with solc-js (pinned) and prints the runtime bytecode of a
// contract it defines: `node compile.js <file.sol> [ContractName]` (the name defaults to the
// file's base name, e.g. TestUSDC.sol -> TestUSDC). Settings: optimizer 200 runs, cancun, no
// metadata, so the output depends on the source and the compiler version only.
const solc = require('solc');
const fs = require('fs');
const path = require('path');
const file = process.argv[2];
if (!file) { console.error('usage: node compile.js <file.sol> [ContractName]'); process.exit(2); }
const unit = path.basename(file);
const name = process.argv[3] || path.basename(file, '.sol');
const input = {
  language: 'Solidity',
  sources: { [unit]: { content: fs.readFileSync(file, 'utf8') } },
  settings: { optimizer: { enabled: true, runs: 200 }, evmVersion: 'cancun', metadata: { bytecodeHash: 'none', appendCBOR: false },
    outputSelection: { '*': { '*': ['evm.deployedBytecode.object'] } } },
};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
const errs = (out.errors || []).filter(e => e.severity === 'error');
if (errs.length) { console.error(errs.map(e => e.formattedMessage).join('\n')); process.exit(1); }
const contract = (out.contracts[unit] || {})[name];
if (!contract) {
  console.error(`no contract ${name} in ${unit}; it defines: ${Object.keys(out.contracts[unit] || {}).join(', ')}`);
  process.exit(1);
}
process.stdout.write('0x' + contract.evm.deployedBytecode.object + '\n');
