//! x402 v1 and v2 wire types: requirements, `PaymentRequired`, payloads,
//! facilitator bodies and answers, and the header codecs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::address::{Address, B65, Nonce};
use crate::error::{Error, json_err};
use crate::network::{Network, serde_v1};
use crate::uint::{Amount, U256};
use crate::version::PathVersion;

/// Header names of both wire versions.
pub mod headers {
    /// v1 request header carrying the payment.
    pub const X_PAYMENT: &str = "X-PAYMENT";
    /// v1 response header carrying the settle response.
    pub const X_PAYMENT_RESPONSE: &str = "X-PAYMENT-RESPONSE";
    /// v2 request header carrying the payment.
    pub const PAYMENT_SIGNATURE: &str = "PAYMENT-SIGNATURE";
    /// v2 response header carrying the settle response.
    pub const PAYMENT_RESPONSE: &str = "PAYMENT-RESPONSE";
    /// v2 402 header carrying the `PaymentRequired` object.
    pub const PAYMENT_REQUIRED: &str = "PAYMENT-REQUIRED";
}

/// Largest header value we decode (64 KiB); bigger is refused before base64.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// Encodes a value as a header value: standard base64 with padding of its JSON.
pub fn encode_header<T: Serialize>(value: &T) -> String {
    // Serializing our own types into a Vec cannot fail (no maps with non-string keys).
    let json = serde_json::to_vec(value).unwrap_or_default();
    STANDARD.encode(json)
}

/// Decodes a header value: standard padded base64 (URL-safe is refused), then JSON.
pub fn decode_header<T: DeserializeOwned>(header: &'static str, value: &str) -> Result<T, Error> {
    if value.len() > MAX_HEADER_LEN {
        return Err(Error::FrameTooLarge {
            size: value.len(),
            limit: MAX_HEADER_LEN,
        });
    }
    let bytes = STANDARD
        .decode(value.trim().as_bytes())
        .map_err(|e| Error::Base64 {
            header,
            message: e.to_string(),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| json_err(header, e))
}

/// The `extra` of an EVM `exact` requirement: the asset's EIP-712 domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eip712Extra {
    /// EIP-712 domain `name`.
    pub name: String,
    /// EIP-712 domain `version`.
    pub version: String,
}

/// Reads `{name, version}` from a requirement's `extra`, if both are strings.
pub fn eip712_extra(extra: Option<&Value>) -> Option<Eip712Extra> {
    let obj = extra?.as_object()?;
    Some(Eip712Extra {
        name: obj.get("name")?.as_str()?.to_string(),
        version: obj.get("version")?.as_str()?.to_string(),
    })
}

/// An x402 v1 payment requirement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsV1 {
    /// Payment scheme (`"exact"`).
    pub scheme: String,
    /// Network (v1 name on the wire; either notation read).
    #[serde(with = "serde_v1")]
    pub network: Network,
    /// Price in atomic units.
    #[serde(alias = "amount")]
    pub max_amount_required: Amount,
    /// Resource URL.
    #[serde(default)]
    pub resource: String,
    /// Resource description.
    #[serde(default)]
    pub description: String,
    /// MIME type of the resource.
    #[serde(default)]
    pub mime_type: String,
    /// Optional output schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// Recipient.
    pub pay_to: String,
    /// Seconds the payment stays valid.
    pub max_timeout_seconds: u64,
    /// Asset (token contract on EVM).
    pub asset: String,
    /// Scheme extra (`{name, version}` on EVM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// The `resource` object of x402 v2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    /// Resource URL.
    pub url: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// An x402 v2 payment requirement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsV2 {
    /// Payment scheme (`"exact"`).
    pub scheme: String,
    /// Network (CAIP-2 on the wire; either notation read).
    pub network: Network,
    /// Price in atomic units.
    #[serde(alias = "maxAmountRequired")]
    pub amount: Amount,
    /// Asset (token contract on EVM).
    pub asset: String,
    /// Recipient.
    pub pay_to: String,
    /// Seconds the payment stays valid.
    pub max_timeout_seconds: u64,
    /// Scheme extra.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// The version-independent view of a requirement that signers and policies need.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    /// Scheme.
    pub scheme: String,
    /// Network.
    pub network: Network,
    /// Exact price in atomic units.
    pub amount: Amount,
    /// Asset.
    pub asset: String,
    /// Recipient.
    pub pay_to: String,
    /// Validity window in seconds.
    pub max_timeout_seconds: u64,
    /// Extra.
    pub extra: Option<Value>,
}

impl From<&PaymentRequirementsV1> for Requirement {
    fn from(r: &PaymentRequirementsV1) -> Self {
        Requirement {
            scheme: r.scheme.clone(),
            network: r.network.clone(),
            amount: r.max_amount_required,
            asset: r.asset.clone(),
            pay_to: r.pay_to.clone(),
            max_timeout_seconds: r.max_timeout_seconds,
            extra: r.extra.clone(),
        }
    }
}

impl From<&PaymentRequirementsV2> for Requirement {
    fn from(r: &PaymentRequirementsV2) -> Self {
        Requirement {
            scheme: r.scheme.clone(),
            network: r.network.clone(),
            amount: r.amount,
            asset: r.asset.clone(),
            pay_to: r.pay_to.clone(),
            max_timeout_seconds: r.max_timeout_seconds,
            extra: r.extra.clone(),
        }
    }
}

impl Requirement {
    /// The v1 form with the given resource fields.
    pub fn to_v1(&self, resource: &str, description: &str) -> PaymentRequirementsV1 {
        PaymentRequirementsV1 {
            scheme: self.scheme.clone(),
            network: self.network.clone(),
            max_amount_required: self.amount,
            resource: resource.into(),
            description: description.into(),
            mime_type: "application/json".into(),
            output_schema: None,
            pay_to: self.pay_to.clone(),
            max_timeout_seconds: self.max_timeout_seconds,
            asset: self.asset.clone(),
            extra: self.extra.clone(),
        }
    }

    /// The v2 form.
    pub fn to_v2(&self) -> PaymentRequirementsV2 {
        PaymentRequirementsV2 {
            scheme: self.scheme.clone(),
            network: self.network.clone(),
            amount: self.amount,
            asset: self.asset.clone(),
            pay_to: self.pay_to.clone(),
            max_timeout_seconds: self.max_timeout_seconds,
            extra: self.extra.clone(),
        }
    }

    /// The EIP-712 domain hint in `extra`, if present.
    pub fn eip712_extra(&self) -> Option<Eip712Extra> {
        eip712_extra(self.extra.as_ref())
    }
}

/// A v2 requirement kept with the exact JSON text it arrived as, so that a
/// payload's `accepted` echoes it byte for byte.
#[derive(Debug, Clone)]
pub struct PreservedRequirement {
    parsed: PaymentRequirementsV2,
    raw: Box<RawValue>,
}

impl PreservedRequirement {
    /// Wraps a requirement we created (its JSON is our serialization).
    pub fn new(parsed: PaymentRequirementsV2) -> Self {
        let text = serde_json::to_string(&parsed).unwrap_or_default();
        let raw = RawValue::from_string(text).unwrap_or_else(|_| empty_raw());
        PreservedRequirement { parsed, raw }
    }

    /// Parses a requirement from JSON text, keeping the text.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let raw: Box<RawValue> =
            serde_json::from_str(text).map_err(|e| json_err("requirement", e))?;
        Self::from_raw(raw).map_err(|e| json_err("requirement", e))
    }

    fn from_raw(raw: Box<RawValue>) -> Result<Self, serde_json::Error> {
        let parsed = serde_json::from_str(raw.get())?;
        Ok(PreservedRequirement { parsed, raw })
    }

    /// The parsed requirement.
    pub fn get(&self) -> &PaymentRequirementsV2 {
        &self.parsed
    }

    /// The exact JSON text.
    pub fn raw_json(&self) -> &str {
        self.raw.get()
    }

    /// Deep (semantic) JSON equality with another requirement, as servers compare `accepted`.
    pub fn json_eq(&self, other: &PaymentRequirementsV2) -> bool {
        match (
            serde_json::from_str::<Value>(self.raw.get()),
            serde_json::to_value(other),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

fn empty_raw() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("a literal empty object is valid JSON")
}

impl PartialEq for PreservedRequirement {
    fn eq(&self, other: &Self) -> bool {
        self.raw.get() == other.raw.get()
    }
}

impl Serialize for PreservedRequirement {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PreservedRequirement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Self::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

/// The x402 v1 402 body: `{x402Version: 1, error, accepts}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV1 {
    /// Always 1.
    pub x402_version: u8,
    /// Why payment is required.
    #[serde(default)]
    pub error: String,
    /// Acceptable requirements.
    pub accepts: Vec<PaymentRequirementsV1>,
}

/// The x402 v2 `PaymentRequired` object (the `PAYMENT-REQUIRED` header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV2 {
    /// Always 2.
    pub x402_version: u8,
    /// Why payment is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// Acceptable requirements, each preserved byte for byte.
    pub accepts: Vec<PreservedRequirement>,
    /// Extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

impl PaymentRequiredV1 {
    /// The first acceptable requirement as an [`Offer`], if any.
    pub fn into_offer(self) -> Option<Offer> {
        self.accepts.into_iter().next().map(Offer::V1)
    }
}

impl PaymentRequiredV2 {
    /// The first acceptable requirement, with the resource, as an [`Offer`], if any.
    pub fn into_offer(self) -> Option<Offer> {
        let resource = self.resource;
        self.accepts
            .into_iter()
            .next()
            .map(|accepted| Offer::V2 { accepted, resource })
    }

    /// The first requirement of `scheme` (`"exact"`, `"batch-settlement"`), with the
    /// resource, as an [`Offer`], if the server offers it.
    pub fn into_offer_of(self, scheme: &str) -> Option<Offer> {
        let resource = self.resource;
        self.accepts
            .into_iter()
            .find(|a| a.get().scheme == scheme)
            .map(|accepted| Offer::V2 { accepted, resource })
    }

    /// Decodes a `PAYMENT-REQUIRED` header value.
    pub fn from_header(value: &str) -> Result<Self, Error> {
        let pr: Self = decode_header(headers::PAYMENT_REQUIRED, value)?;
        if pr.x402_version != 2 {
            return Err(Error::UnsupportedVersion(pr.x402_version.to_string()));
        }
        Ok(pr)
    }

    /// Encodes it as a `PAYMENT-REQUIRED` header value.
    pub fn to_header(&self) -> String {
        encode_header(self)
    }
}

/// An EIP-3009 `TransferWithAuthorization` message, all fields strings on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// Payer.
    pub from: Address,
    /// Recipient (`payTo`).
    pub to: Address,
    /// Amount in atomic units.
    pub value: Amount,
    /// Not valid before (unix seconds).
    pub valid_after: U256,
    /// Not valid at or after (unix seconds).
    pub valid_before: U256,
    /// 32 random bytes.
    pub nonce: Nonce,
}

/// The `payload` of an EVM `exact` payment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactEvmPayload {
    /// 65-byte `r || s || v` signature.
    pub signature: B65,
    /// The signed authorization.
    pub authorization: Authorization,
}

impl std::fmt::Debug for ExactEvmPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactEvmPayload")
            .field("signature", &"<redacted>")
            .field("authorization", &self.authorization)
            .finish()
    }
}

/// A scheme payload: the EVM `exact` form, or any other JSON object kept as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SchemePayload {
    /// EVM `exact` (EIP-3009).
    ExactEvm(ExactEvmPayload),
    /// Any other scheme (Solana `exact`, Permit2, ...), kept verbatim.
    Other(Map<String, Value>),
}

/// An x402 v1 payment payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV1 {
    /// Always 1.
    pub x402_version: u8,
    /// Scheme.
    pub scheme: String,
    /// Network (v1 name).
    #[serde(with = "serde_v1")]
    pub network: Network,
    /// Scheme payload.
    pub payload: SchemePayload,
}

/// Name of the x402 `payment-identifier` extension (idempotency key).
pub const PAYMENT_IDENTIFIER: &str = "payment-identifier";

/// An x402 v2 payment payload; `accepted` is the chosen requirement exactly as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV2 {
    /// Always 2.
    pub x402_version: u8,
    /// The resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// The accepted requirement, byte for byte.
    pub accepted: PreservedRequirement,
    /// Scheme payload.
    pub payload: SchemePayload,
    /// Extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// A payment payload of either wire version.
#[allow(clippy::large_enum_variant)] // payloads are short-lived; boxing would cost an allocation per parse
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentPayload {
    /// x402 v1.
    V1(PaymentPayloadV1),
    /// x402 v2.
    V2(PaymentPayloadV2),
}

impl PaymentPayload {
    /// The wire version.
    pub fn version(&self) -> PathVersion {
        match self {
            PaymentPayload::V1(_) => PathVersion::V1,
            PaymentPayload::V2(_) => PathVersion::V2,
        }
    }

    /// The scheme payload.
    pub fn scheme_payload(&self) -> &SchemePayload {
        match self {
            PaymentPayload::V1(p) => &p.payload,
            PaymentPayload::V2(p) => &p.payload,
        }
    }

    /// The EVM `exact` payload, if that is what this is.
    pub fn exact_evm(&self) -> Option<&ExactEvmPayload> {
        match self.scheme_payload() {
            SchemePayload::ExactEvm(p) => Some(p),
            SchemePayload::Other(_) => None,
        }
    }

    /// Scheme named by the payload.
    pub fn scheme(&self) -> &str {
        match self {
            PaymentPayload::V1(p) => &p.scheme,
            PaymentPayload::V2(p) => &p.accepted.get().scheme,
        }
    }

    /// The id of the x402 `payment-identifier` extension
    /// (`extensions["payment-identifier"].info.id`), v2 only. `Ok(None)` when
    /// absent; an error when present but not 16 to 128 characters of
    /// `[A-Za-z0-9_-]`.
    pub fn payment_identifier(&self) -> Result<Option<&str>, Error> {
        let PaymentPayload::V2(p) = self else {
            return Ok(None);
        };
        let Some(id) = p
            .extensions
            .as_ref()
            .and_then(|e| e.get(PAYMENT_IDENTIFIER))
            .and_then(|e| e.get("info"))
            .and_then(|i| i.get("id"))
        else {
            return Ok(None);
        };
        let bad = || {
            Error::Protocol(
                "payment-identifier id must be 16 to 128 characters of [A-Za-z0-9_-]".into(),
            )
        };
        let id = id.as_str().ok_or_else(bad)?;
        let ok = (16..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok { Ok(Some(id)) } else { Err(bad()) }
    }

    /// Network named by the payload.
    pub fn network(&self) -> &Network {
        match self {
            PaymentPayload::V1(p) => &p.network,
            PaymentPayload::V2(p) => &p.accepted.get().network,
        }
    }

    /// The header value (base64 JSON).
    pub fn to_header(&self) -> String {
        match self {
            PaymentPayload::V1(p) => encode_header(p),
            PaymentPayload::V2(p) => encode_header(p),
        }
    }

    /// Decodes the header value of the given version, checking `x402Version`.
    pub fn from_header(version: PathVersion, value: &str) -> Result<Self, Error> {
        let header = version.payment_header();
        let p = match version {
            PathVersion::V1 => PaymentPayload::V1(decode_header(header, value)?),
            PathVersion::V2 => PaymentPayload::V2(decode_header(header, value)?),
        };
        p.check_version()?;
        Ok(p)
    }

    fn check_version(&self) -> Result<(), Error> {
        let (declared, expected) = match self {
            PaymentPayload::V1(p) => (p.x402_version, 1),
            PaymentPayload::V2(p) => (p.x402_version, 2),
        };
        if declared != expected {
            return Err(Error::UnsupportedVersion(format!(
                "x402Version {declared} on a v{expected} path"
            )));
        }
        Ok(())
    }

    /// The payload as a JSON value (for facilitator bodies).
    pub fn to_value(&self) -> Value {
        match self {
            PaymentPayload::V1(p) => serde_json::to_value(p),
            PaymentPayload::V2(p) => serde_json::to_value(p),
        }
        .unwrap_or(Value::Null)
    }
}

impl Serialize for PaymentPayload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PaymentPayload::V1(p) => p.serialize(s),
            PaymentPayload::V2(p) => p.serialize(s),
        }
    }
}

/// Payment requirements of either wire version.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentRequirements {
    /// x402 v1.
    V1(PaymentRequirementsV1),
    /// x402 v2.
    V2(PaymentRequirementsV2),
}

impl PaymentRequirements {
    /// The version-independent view.
    pub fn requirement(&self) -> Requirement {
        match self {
            PaymentRequirements::V1(r) => r.into(),
            PaymentRequirements::V2(r) => r.into(),
        }
    }
}

impl Serialize for PaymentRequirements {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PaymentRequirements::V1(r) => r.serialize(s),
            PaymentRequirements::V2(r) => r.serialize(s),
        }
    }
}

/// The body of `POST /verify` and `POST /settle`.
#[derive(Debug, Clone, PartialEq)]
pub struct FacilitatorRequest {
    /// The payment.
    pub payment_payload: PaymentPayload,
    /// What it must pay.
    pub payment_requirements: PaymentRequirements,
}

impl FacilitatorRequest {
    /// The x402 version of the body.
    pub fn x402_version(&self) -> u8 {
        self.payment_payload.version().x402_version()
    }

    /// Parses a body, dispatching on `x402Version`.
    pub fn from_json(text: &[u8]) -> Result<Self, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            x402_version: u64,
            payment_payload: Box<RawValue>,
            payment_requirements: Box<RawValue>,
        }
        let w: Wire =
            serde_json::from_slice(text).map_err(|e| json_err("facilitator request", e))?;
        let version = PathVersion::from_x402_version(w.x402_version)?;
        let (payment_payload, payment_requirements) = match version {
            PathVersion::V1 => (
                PaymentPayload::V1(
                    serde_json::from_str(w.payment_payload.get())
                        .map_err(|e| json_err("paymentPayload", e))?,
                ),
                PaymentRequirements::V1(
                    serde_json::from_str(w.payment_requirements.get())
                        .map_err(|e| json_err("paymentRequirements", e))?,
                ),
            ),
            PathVersion::V2 => (
                PaymentPayload::V2(
                    serde_json::from_str(w.payment_payload.get())
                        .map_err(|e| json_err("paymentPayload", e))?,
                ),
                PaymentRequirements::V2(
                    serde_json::from_str(w.payment_requirements.get())
                        .map_err(|e| json_err("paymentRequirements", e))?,
                ),
            ),
        };
        let req = FacilitatorRequest {
            payment_payload,
            payment_requirements,
        };
        req.payment_payload.check_version()?;
        Ok(req)
    }
}

impl Serialize for FacilitatorRequest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("FacilitatorRequest", 3)?;
        st.serialize_field("x402Version", &self.x402_version())?;
        st.serialize_field("paymentPayload", &self.payment_payload)?;
        st.serialize_field("paymentRequirements", &self.payment_requirements)?;
        st.end()
    }
}

/// The answer of `POST /verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether the payment is valid.
    pub is_valid: bool,
    /// Why not (opaque string; see [`VerifyResponse::reason`] and [`ReasonFamily`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    /// The payer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Scheme-specific detail (`batch-settlement`: the channel's state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// The answer of `POST /settle`, also the x402 response header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Whether settlement succeeded.
    pub success: bool,
    /// Why not (opaque string; see [`SettleResponse::reason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// The payer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Transaction hash (empty when not settled on chain).
    #[serde(default)]
    pub transaction: String,
    /// Network, as the facilitator wrote it.
    #[serde(default)]
    pub network: String,
    /// Amount settled (v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// Scheme-specific detail (`batch-settlement`: `chargedAmount`, `channelState`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl SettleResponse {
    /// True when the facilitator broadcast the transfer but does not know
    /// its receipt: paid, unconfirmed. Never pay again for it.
    pub fn is_pending(&self) -> bool {
        self.reason()
            .is_some_and(|r| r == crate::FacilitatorReason::SettlementPending)
    }

    /// `errorReason` in the shared vocabulary.
    pub fn reason(&self) -> Option<crate::FacilitatorReason> {
        self.error_reason
            .as_deref()
            .map(crate::FacilitatorReason::parse)
    }
}

impl VerifyResponse {
    /// `invalidReason` in the shared vocabulary.
    pub fn reason(&self) -> Option<crate::FacilitatorReason> {
        self.invalid_reason
            .as_deref()
            .map(crate::FacilitatorReason::parse)
    }
}

/// One entry of `GET /supported`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    /// Wire version.
    pub x402_version: u8,
    /// Scheme.
    pub scheme: String,
    /// Network as written by the facilitator.
    pub network: String,
    /// Extra.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// The answer of `GET /supported`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SupportedResponse {
    /// Supported kinds.
    pub kinds: Vec<SupportedKind>,
    /// Extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Vec<String>>,
    /// Signer addresses by network family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signers: Option<Value>,
}

/// Families of failure reasons; reason strings differ between facilitators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReasonFamily {
    /// Signature invalid or not from the payer.
    Signature,
    /// Outside `validAfter`/`validBefore`.
    TimeWindow,
    /// Wrong amount.
    Amount,
    /// Wrong recipient.
    Recipient,
    /// Insufficient funds.
    Funds,
    /// Nonce already used.
    Nonce,
    /// Wrong network, asset or scheme.
    Network,
    /// Anything else.
    Other,
}

impl ReasonFamily {
    /// Classifies an opaque reason string.
    pub fn classify(reason: &str) -> Self {
        let r = reason.to_ascii_lowercase();
        let has = |k: &str| r.contains(k);
        if has("nonce") || has("replay") || has("already") {
            ReasonFamily::Nonce
        } else if has("signature") || has("signer") {
            ReasonFamily::Signature
        } else if has("valid_before")
            || has("valid_after")
            || has("validbefore")
            || has("validafter")
            || has("expired")
            || has("time")
        {
            ReasonFamily::TimeWindow
        } else if has("funds") || has("balance") {
            ReasonFamily::Funds
        } else if has("value") || has("amount") {
            ReasonFamily::Amount
        } else if has("recipient") || has("pay_to") || has("payto") {
            ReasonFamily::Recipient
        } else if has("network") || has("asset") || has("scheme") || has("chain") {
            ReasonFamily::Network
        } else {
            ReasonFamily::Other
        }
    }
}

/// What a server asks to be paid, in the wire form of its version.
///
/// v2 keeps the requirement byte for byte so the payload's `accepted` echoes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// An x402 v1 requirement.
    V1(PaymentRequirementsV1),
    /// An x402 v2 requirement and its resource.
    V2 {
        /// The requirement, preserved.
        accepted: PreservedRequirement,
        /// The resource, echoed in the payload.
        resource: Option<ResourceInfo>,
    },
}

impl Offer {
    /// The wire version.
    pub fn version(&self) -> PathVersion {
        match self {
            Offer::V1(_) => PathVersion::V1,
            Offer::V2 { .. } => PathVersion::V2,
        }
    }

    /// The version-independent requirement.
    pub fn requirement(&self) -> Requirement {
        match self {
            Offer::V1(r) => r.into(),
            Offer::V2 { accepted, .. } => accepted.get().into(),
        }
    }

    /// The same offer as a corrective answer (an error body whose `accepts[0]` is
    /// this offer's requirement with more in its `extra`, as a `batch-settlement`
    /// server's `cumulative_amount_mismatch` 402 carries `channelState`) restates
    /// it; `None` when the body holds no such requirement for the same scheme,
    /// network, asset and receiver.
    pub fn corrected(&self, body: &[u8]) -> Option<Offer> {
        let Offer::V2 { accepted, resource } = self else {
            return None;
        };
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let first = v.get("accepts")?.get(0)?;
        let again = PreservedRequirement::from_json(&first.to_string()).ok()?;
        let (a, b) = (accepted.get(), again.get());
        let same = a.scheme == b.scheme
            && a.network == b.network
            && a.asset.eq_ignore_ascii_case(&b.asset)
            && a.pay_to.eq_ignore_ascii_case(&b.pay_to)
            && a.amount == b.amount;
        same.then(|| Offer::V2 {
            accepted: again,
            resource: resource.clone(),
        })
    }

    /// Builds the offer of a version from a version-independent requirement.
    pub fn from_requirement(
        version: PathVersion,
        req: &Requirement,
        resource_url: &str,
        description: &str,
    ) -> Self {
        match version {
            PathVersion::V1 => Offer::V1(req.to_v1(resource_url, description)),
            PathVersion::V2 => Offer::V2 {
                accepted: PreservedRequirement::new(req.to_v2()),
                resource: Some(ResourceInfo {
                    url: resource_url.into(),
                    description: Some(description.into()),
                    mime_type: Some("application/json".into()),
                }),
            },
        }
    }
}
