// Compiles TestUSDC.sol with solc-js (pinned) and prints the runtime bytecode.
const solc = require('solc');
const fs = require('fs');
const src = fs.readFileSync(process.argv[2], 'utf8');
const input = {
  language: 'Solidity',
  sources: { 'TestUSDC.sol': { content: src } },
  settings: { optimizer: { enabled: true, runs: 200 }, evmVersion: 'cancun', metadata: { bytecodeHash: 'none', appendCBOR: false },
    outputSelection: { '*': { '*': ['evm.deployedBytecode.object'] } } },
};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
const errs = (out.errors || []).filter(e => e.severity === 'error');
if (errs.length) { console.error(errs.map(e => e.formattedMessage).join('\n')); process.exit(1); }
process.stdout.write('0x' + out.contracts['TestUSDC.sol'].TestUSDC.evm.deployedBytecode.object + '\n');
