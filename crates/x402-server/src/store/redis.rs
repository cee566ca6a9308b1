//! The Redis store: shared state for several server instances.
//!
//! Every commit is one Lua script, run whole in Redis: a session's state is
//! compared and swapped by version, a payment's claim is set only if absent,
//! and a settlement's outcome is written only by the instance that owns it.
//! [`MemoryStore`](super::MemoryStore) has the same semantics in one process.
//!
//! Keys (all under the configured prefix):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `s:{session}` | hash | `v` version, `j` [`SessionState`] JSON, `c` connections |
//! | `r:{payment key}` | hash | `j` [`PaymentRecord`] JSON, `o` owner instance (while settling), `d` the payload to settle |
//! | `c:{payer}:{nonce}` | string | the payment key holding the authorization |
//! | `ch:{channel id}` | hash | `v` version, `j` a `batch-settlement` channel record (JSON; no expiry) |
//! | `channels` | set | every channel id held |
//! | `i:{payment-identifier}` | string | the payment key holding the identifier |
//! | `alive:{instance}` | string | present while the instance lives (3 s lease) |
//! | `e:{stream}` | stream | the stream's events (entry id `{seq}-1`), capped at the replay buffer |
//! | `lease:{stream}` | string | the instance running the stream's source |
//! | `settling` | set | payment keys whose settlement is under way (for the orphan sweep) |
//! | `notify` | channel | session ids whose state changed |

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use x402_session::{PaymentIn, PaymentKey, PaymentRecord, SessionState};
use x402_types::{Address, Nonce};

use async_trait::async_trait;

use super::{
    Begin, Commit, Finish, FinishKind, Loaded, PaymentStore, StoreError, Stored, Versioned, ms,
};

/// Redis, shared by every instance of a deployment.
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    instance: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Compare-and-set of a channel record: `KEYS[1]` the channel, `KEYS[2]` the set of
/// channel ids, `ARGV` the expected version, the new record and the id. 1 written,
/// 0 conflict.
const COMMIT_CHANNEL: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'j', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"#;

/// Compare-and-set of a session's state: `KEYS[1]` the session, `ARGV` the
/// expected version, the state, the expiry (unix ms) and the expected connection
/// count. 1 written, 0 conflict (or gone).
const COMMIT_SESSION: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v == 0 or v ~= tonumber(ARGV[1]) then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'c') or '0') ~= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'j', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"#;

/// A compare-and-set script's answer: 1 written, else a conflict.
fn compared(done: i64) -> Commit {
    if done == 1 {
        Commit::Done
    } else {
        Commit::Conflict
    }
}

const LOAD: &str = r#"
local p = ARGV[1]
local function rec(k)
  local r = redis.call('HMGET', p .. 'r:' .. k, 'j', 'o', 'd')
  if not r[1] then return nil end
  local o = r[2] or ''
  local alive = false
  if o ~= '' then alive = redis.call('EXISTS', p .. 'alive:' .. o) == 1 end
  return {k = k, j = r[1], o = o, d = r[3] or '', a = alive}
end
local out = {recs = {}}
local s = redis.call('HMGET', KEYS[1], 'v', 'j', 'c')
out.v = tonumber(s[1] or '0')
out.j = s[2] or ''
out.c = tonumber(s[3] or '0')
if ARGV[2] ~= '' then
  local own = rec(ARGV[2])
  if own then table.insert(out.recs, own) end
  for i = 2, 3 do
    if KEYS[i] ~= '' then
      local k = redis.call('GET', KEYS[i])
      if k and k ~= ARGV[2] then
        local r = rec(k)
        if r then table.insert(out.recs, r) else out.orphan = true end
      end
    end
  end
end
if #out.recs == 0 then out.recs = nil end
return cjson.encode(out)
"#;

const BEGIN: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return 'conflict' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'conflict' end
local c = redis.call('GET', KEYS[3])
if c and c ~= ARGV[8] then return 'conflict' end
if ARGV[9] == '1' then
  local i = redis.call('GET', KEYS[4])
  if i and i ~= ARGV[8] then return 'conflict' end
end
redis.call('HSET', KEYS[1], 'v', v + 1, 'j', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'j', ARGV[4], 'o', ARGV[5], 'd', ARGV[6])
redis.call('PEXPIREAT', KEYS[2], ARGV[7])
redis.call('SET', KEYS[3], ARGV[8], 'PXAT', ARGV[7])
if ARGV[9] == '1' then redis.call('SET', KEYS[4], ARGV[8], 'PXAT', ARGV[7]) end
redis.call('SADD', KEYS[5], ARGV[8])
return 'ok'
"#;

const FINISH: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 'lost' end
local o = redis.call('HGET', KEYS[2], 'o') or ''
if o ~= ARGV[6] then
  -- Not (or no longer) ours: only a settlement (a fact) may still be
  -- written, ending a record settling elsewhere or replacing an unresolved
  -- answer. A refusal, an unresolved answer or a forget from a former owner
  -- could hide a settlement the new owner's attempt makes.
  if ARGV[9] ~= 'credit' then return 'lost' end
  if o == '' and redis.call('HGET', KEYS[2], 'u') ~= '1' then return 'lost' end
end
if ARGV[2] ~= '' then
  local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
  if v ~= tonumber(ARGV[1]) then return 'conflict' end
  redis.call('HSET', KEYS[1], 'v', v + 1, 'j', ARGV[2])
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
end
redis.call('SREM', KEYS[5], ARGV[7])
local function free()
  if redis.call('GET', KEYS[3]) == ARGV[7] then redis.call('DEL', KEYS[3]) end
  if ARGV[8] == '1' and redis.call('GET', KEYS[4]) == ARGV[7] then redis.call('DEL', KEYS[4]) end
end
if ARGV[9] == 'forget' then
  redis.call('DEL', KEYS[2])
  free()
else
  local u = '0'
  if ARGV[9] == 'unresolved' then u = '1' end
  redis.call('HSET', KEYS[2], 'j', ARGV[4], 'o', '', 'd', '', 'u', u)
  redis.call('PEXPIREAT', KEYS[2], ARGV[5])
  if ARGV[9] == 'refused' then
    -- A definite refusal moved nothing: its answer stays, its claims go.
    free()
  else
    redis.call('PEXPIREAT', KEYS[3], ARGV[5])
    if ARGV[8] == '1' then redis.call('PEXPIREAT', KEYS[4], ARGV[5]) end
  end
end
return 'ok'
"#;

const ADOPT: &str = r#"
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'o', ARGV[2])
return 1
"#;

const ORPHANS: &str = r#"
local p = ARGV[1]
local out = {}
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local r = redis.call('HMGET', p .. 'r:' .. k, 'j', 'o', 'd')
  if not r[1] or not r[2] or r[2] == '' then
    redis.call('SREM', KEYS[1], k)
  elseif r[2] == ARGV[2] or redis.call('EXISTS', p .. 'alive:' .. r[2]) == 0 then
    table.insert(out, {k = k, j = r[1], o = r[2], d = r[3] or '', a = r[2] == ARGV[2]})
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"#;

const CONNECT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'c', 1)
"#;

const PUBLISH: &str = r#"
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seq = 0
if #top > 0 then
  seq = tonumber(string.match(top[1][1], '^(%d+)-')) + 1
end
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= seq then return -1 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'f', ARGV[1] .. seq .. ARGV[2])
return seq
"#;

const LEASE: &str = r#"
local h = redis.call('GET', KEYS[1])
if h == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not h then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

#[derive(Deserialize)]
struct LoadedRaw {
    v: f64,
    j: String,
    c: f64,
    #[serde(default)]
    recs: Vec<RecRaw>,
    #[serde(default)]
    orphan: bool,
}

#[derive(Deserialize)]
struct RecRaw {
    k: String,
    j: String,
    o: String,
    d: String,
    a: bool,
}

/// Waits at most `limit` for a Redis operation.
async fn timed<T, E: Into<StoreError>>(
    limit: Duration,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, op)
        .await
        .map_err(|_| StoreError::Other("redis did not answer in time".into()))?
        .map_err(Into::into)
}

impl RedisStore {
    /// Connects (the connection manager reconnects by itself).
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = timed(
            timeout * 2,
            ConnectionManager::new_with_config(client.clone(), cfg),
        )
        .await?;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| StoreError::Other(format!("no randomness: {e}")))?;
        Ok(RedisStore {
            client,
            conn,
            prefix: prefix.to_string(),
            instance: hex::encode(id),
            timeout,
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A dedicated connection for reads that block in Redis for up to
    /// `blocks_for` (they must not hold up the shared connection). Its
    /// answers may take that long plus the store's timeout: the client's
    /// default (500 ms) would cut every idle `XREAD BLOCK` short.
    pub(crate) async fn dedicated(
        &self,
        blocks_for: Duration,
    ) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(blocks_for + self.timeout));
        timed(
            self.timeout * 2,
            self.client
                .get_multiplexed_async_connection_with_config(&cfg),
        )
        .await
    }

    fn session_key(&self, session: &str) -> String {
        format!("{}s:{session}", self.prefix)
    }

    fn record_key(&self, key: &PaymentKey) -> String {
        format!("{}r:{}", self.prefix, key.as_str())
    }

    fn channel_set(&self) -> String {
        format!("{}channels", self.prefix)
    }

    fn channel_key(&self, id: &str) -> String {
        format!("{}ch:{id}", self.prefix)
    }

    fn claim_key(&self, payer: &Address, nonce: &Nonce) -> String {
        format!("{}c:{payer}:{nonce}", self.prefix)
    }

    fn pid_key(&self, pid: &str) -> String {
        format!("{}i:{pid}", self.prefix)
    }

    pub(crate) fn events_key(&self, stream: &str) -> String {
        format!("{}e:{stream}", self.prefix)
    }

    pub(crate) fn lease_key(&self, stream: &str) -> String {
        format!("{}lease:{stream}", self.prefix)
    }

    /// The keys BEGIN and FINISH touch for a payment: its session, its record,
    /// its authorization's claim and its payment identifier (`-`: none), and the set of settling records.
    fn payment_keys(&self, session: &str, key: &PaymentKey, record: &PaymentRecord) -> [String; 5] {
        [
            self.session_key(session),
            self.record_key(key),
            self.claim_key(&record.payer, &record.nonce),
            record
                .payment_id
                .as_deref()
                .map_or_else(|| "-".into(), |p| self.pid_key(p)),
            self.settling_key(),
        ]
    }

    fn settling_key(&self) -> String {
        format!("{}settling", self.prefix)
    }

    fn notify_channel(&self) -> String {
        format!("{}notify", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &str,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        let s = redis::Script::new(script);
        let mut inv = s.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        timed(self.timeout, inv.invoke_async(&mut conn)).await
    }

    /// Marks this instance alive for `ttl`.
    pub async fn heartbeat(&self, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let key = format!("{}alive:{}", self.prefix, self.instance);
        timed(
            self.timeout,
            redis::cmd("SET")
                .arg(key)
                .arg("1")
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Takes or keeps the lease of a stream's source for `ttl`; `true` when held.
    pub async fn lease(&self, stream: &str, ttl: Duration) -> Result<bool, StoreError> {
        let n: i64 = self
            .run(
                LEASE,
                &[self.lease_key(stream)],
                &[self.instance.clone(), ttl.as_millis().to_string()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Publishes one event into a stream's shared log, from any process
    /// (the `api` source of a cluster: every instance delivers it). Returns
    /// its sequence number. Concurrent publishers never share a number: one
    /// script reads the stream's last entry and appends with the next number
    /// as its id.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), x402_server::StoreError> {
    /// let store = x402_server::RedisStore::connect(
    ///     "redis://127.0.0.1:6379", "x402:", std::time::Duration::from_secs(1)).await?;
    /// let seq = store.publish("prices", 1024, &serde_json::json!({"price": 101.5})).await?;
    /// # let _ = seq; Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        stream: &str,
        cap: usize,
        data: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        let raw = serde_json::value::to_raw_value(data)
            .map_err(|e| StoreError::Other(format!("cannot encode: {e}")))?;
        self.append(stream, cap, raw, None)
            .await?
            .ok_or_else(|| StoreError::Other("event not appended".into()))
    }

    /// Appends an event with the next sequence number, atomically; with
    /// `expected`, only if that is the next number (`None` otherwise: another
    /// publisher got there first).
    pub(crate) async fn append(
        &self,
        stream: &str,
        cap: usize,
        data: Box<serde_json::value::RawValue>,
        expected: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        // The frame with sequence number 0, split around the number: the
        // script numbers it (the next after the stream's last).
        let text = crate::hub::event_text(0, data);
        let head = r#"{"type":"event","seq":"#;
        let tail = text
            .strip_prefix(head)
            .and_then(|t| t.strip_prefix('0'))
            .ok_or_else(|| StoreError::Other("unexpected event frame".into()))?;
        let seq: i64 = self
            .run(
                PUBLISH,
                &[self.events_key(stream)],
                &[
                    head.to_string(),
                    tail.to_string(),
                    cap.max(1).to_string(),
                    expected.map(|e| e.to_string()).unwrap_or_default(),
                ],
            )
            .await?;
        Ok(u64::try_from(seq).ok())
    }

    /// Subscribes to session change notices.
    pub(crate) async fn subscribe(&self) -> Result<redis::aio::PubSub, StoreError> {
        let mut ps = timed(self.timeout * 2, self.client.get_async_pubsub()).await?;
        ps.subscribe(self.notify_channel()).await?;
        Ok(ps)
    }
}

fn stored(r: RecRaw) -> Result<Stored, StoreError> {
    let record: PaymentRecord = serde_json::from_str(&r.j)
        .map_err(|e| StoreError::Other(format!("unreadable record: {e}")))?;
    Ok(Stored {
        key: PaymentKey::from_stored(r.k),
        record,
        owner: r.o,
        owner_alive: r.a,
        payload: r.d,
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Other(format!("cannot encode: {e}")))
}

#[async_trait]
impl PaymentStore for RedisStore {
    fn instance(&self) -> &str {
        &self.instance
    }

    /// Loads a session and, for a payment, its record and the records holding
    /// its authorization and its payment identifier.
    async fn load(&self, session: &str, payment: Option<&PaymentIn>) -> Result<Loaded, StoreError> {
        let (own, claim, pid) = match payment {
            Some(p) => (
                p.key.as_str().to_string(),
                self.claim_key(&p.payer, &p.nonce),
                p.payment_id
                    .as_deref()
                    .map(|i| self.pid_key(i))
                    .unwrap_or_default(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let raw: String = self
            .run(
                LOAD,
                &[self.session_key(session), claim, pid],
                &[self.prefix.clone(), own],
            )
            .await?;
        let raw: LoadedRaw = serde_json::from_str(&raw)
            .map_err(|e| StoreError::Other(format!("unreadable answer: {e}")))?;
        let mut out = Loaded {
            orphan_claim: raw.orphan,
            ..Loaded::default()
        };
        if !raw.j.is_empty() {
            let mut state: SessionState = serde_json::from_str(&raw.j)
                .map_err(|e| StoreError::Other(format!("unreadable session: {e}")))?;
            state.connections = raw.c as u64;
            out.session = Versioned {
                version: raw.v as u64,
                state,
                exists: true,
            };
        } else {
            out.session.version = raw.v as u64;
        }
        for r in raw.recs {
            out.records.push(stored(r)?);
        }
        Ok(out)
    }

    async fn begin(&self, b: Begin<'_>) -> Result<Commit, StoreError> {
        let pid = b.record.payment_id.as_deref();
        let r: String = self
            .run(
                BEGIN,
                &self.payment_keys(b.session, b.key, b.record),
                &[
                    b.version.to_string(),
                    json(b.state)?,
                    ms(b.session_until).to_string(),
                    json(b.record)?,
                    self.instance.clone(),
                    match b.request {
                        Some(r) => json(r)?,
                        None => String::new(),
                    },
                    ms(b.record.expires).to_string(),
                    b.key.as_str().to_string(),
                    if pid.is_some() { "1" } else { "0" }.into(),
                ],
            )
            .await?;
        Ok(if r == "ok" {
            Commit::Done
        } else {
            Commit::Conflict
        })
    }

    async fn finish(&self, f: Finish<'_>) -> Result<Commit, StoreError> {
        let pid = f.before.payment_id.as_deref();
        let r: String = self
            .run(
                FINISH,
                &self.payment_keys(f.session, f.key, f.before),
                &[
                    f.version.to_string(),
                    f.state.map(json).transpose()?.unwrap_or_default(),
                    ms(f.session_until).to_string(),
                    f.record.map(json).transpose()?.unwrap_or_default(),
                    ms(f.record.map_or(0, |r| r.expires)).to_string(),
                    self.instance.clone(),
                    f.key.as_str().to_string(),
                    if pid.is_some() { "1" } else { "0" }.into(),
                    FinishKind::of(f.record).as_str().into(),
                ],
            )
            .await?;
        Ok(match r.as_str() {
            "ok" => Commit::Done,
            "lost" => Commit::Lost,
            _ => Commit::Conflict,
        })
    }

    async fn orphans(&self) -> Result<Vec<Stored>, StoreError> {
        let raw: String = self
            .run(
                ORPHANS,
                &[self.settling_key()],
                &[self.prefix.clone(), self.instance.clone()],
            )
            .await?;
        let raw: Vec<RecRaw> = serde_json::from_str(&raw)
            .map_err(|e| StoreError::Other(format!("unreadable answer: {e}")))?;
        raw.into_iter().map(stored).collect()
    }

    /// Takes over the settlement of a record whose owner died. `true` when
    /// this instance now owns it.
    async fn adopt(&self, key: &PaymentKey, dead: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .run(
                ADOPT,
                &[self.record_key(key), format!("{}alive:{dead}", self.prefix)],
                &[dead.to_string(), self.instance.clone()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Counts a new connection of a session; its number (the latest holds
    /// the session), or `None` when the store does not hold the session.
    async fn connect_session(&self, session: &str) -> Result<Option<u64>, StoreError> {
        let n: i64 = self.run(CONNECT, &[self.session_key(session)], &[]).await?;
        Ok(u64::try_from(n).ok())
    }

    /// Tells every instance that a session changed.
    async fn notify(&self, session: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = timed(self.timeout, conn.publish(self.notify_channel(), session)).await?;
        Ok(())
    }

    async fn channels(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        timed(
            self.timeout,
            redis::cmd("SMEMBERS")
                .arg(self.channel_set())
                .query_async(&mut conn),
        )
        .await
    }

    async fn commit_session(
        &self,
        session: &str,
        version: u64,
        connections: u64,
        state: &SessionState,
        until: u64,
    ) -> Result<Commit, StoreError> {
        let done: i64 = self
            .run(
                COMMIT_SESSION,
                &[self.session_key(session)],
                &[
                    version.to_string(),
                    json(state)?,
                    ms(until).to_string(),
                    connections.to_string(),
                ],
            )
            .await?;
        Ok(compared(done))
    }

    async fn load_channel(&self, id: &str) -> Result<(u64, Option<String>), StoreError> {
        let mut conn = self.conn.clone();
        let (v, j): (Option<u64>, Option<String>) = timed(
            self.timeout,
            redis::cmd("HMGET")
                .arg(self.channel_key(id))
                .arg("v")
                .arg("j")
                .query_async(&mut conn),
        )
        .await?;
        Ok((v.unwrap_or(0), j))
    }

    async fn commit_channel(
        &self,
        id: &str,
        version: u64,
        record: &str,
    ) -> Result<Commit, StoreError> {
        let done: i64 = self
            .run(
                COMMIT_CHANNEL,
                &[self.channel_key(id), self.channel_set()],
                &[version.to_string(), record.to_string(), id.to_string()],
            )
            .await?;
        Ok(compared(done))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let pong: String = timed(self.timeout, redis::cmd("PING").query_async(&mut conn)).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Other(format!("PING answered {pong:?}")))
        }
    }
}
