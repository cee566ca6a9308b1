//! The schema document answered by `GET /{ver}/schema/{id}` (section 2).

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::error::{Error, json_err};
use crate::network::Network;
use crate::uint::Amount;
use crate::version::PathVersion;
use crate::x402::{PaymentRequirementsV1, Requirement};

/// `pricing`: informational prices in display units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// Price per second in `currency` units (display only; never used for money).
    pub price_per_second: f64,
    /// Currency symbol (`"USDC"`).
    pub currency: String,
    /// Seconds one payment buys (one slice).
    pub estimated_duration: u64,
    /// Price per minute, decimal string in currency units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_minute: Option<String>,
    /// Price per slice, decimal string in currency units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_slice: Option<String>,
}

/// `paymentDetails`: the one x402 requirement of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentDetails {
    /// `"exact"`.
    pub scheme: String,
    /// Network, either notation read; written per the schema's version.
    pub network: Network,
    /// Token contract.
    pub asset: String,
    /// Recipient.
    pub pay_to: String,
    /// Price of one slice in atomic units.
    #[serde(alias = "amount")]
    pub max_amount_required: Amount,
    /// Validity window of a payment.
    pub max_timeout_seconds: u64,
    /// EIP-712 domain `{name, version}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl PaymentDetails {
    /// As a version-independent requirement.
    pub fn requirement(&self) -> Requirement {
        Requirement {
            scheme: self.scheme.clone(),
            network: self.network.clone(),
            amount: self.max_amount_required,
            asset: self.asset.clone(),
            pay_to: self.pay_to.clone(),
            max_timeout_seconds: self.max_timeout_seconds,
            extra: self.extra.clone(),
        }
    }
}

/// `stream`: what is sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StreamInfo {
    /// Stream id.
    pub id: String,
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// The schema answer.
///
/// Reading is lenient (unknown fields, `amount` alias, either network
/// notation); writing is strict and uses the network notation of `version`.
///
/// ```
/// use x402_types::Schema;
/// let json = r#"{"protocol":"ws402","version":"2",
///   "websocketEndpoint":"wss://x402.atomicstream.net/v2/stream/btc?t=tok",
///   "pricing":{"pricePerSecond":0.0001,"currency":"USDC","estimatedDuration":300},
///   "paymentDetails":{"scheme":"exact","network":"base-sepolia",
///     "asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e",
///     "payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
///     "amount":"30000","maxTimeoutSeconds":60},
///   "stream":{"id":"btc","title":"BTC","description":"trades"},"future":1}"#;
/// let s = Schema::from_json(json.as_bytes()).unwrap();
/// assert_eq!(s.payment_details.max_amount_required, 30_000u64.into());
/// assert!(s.to_json().contains(r#""network":"eip155:84532""#));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema {
    /// `"ws402"`.
    pub protocol: String,
    /// The path version.
    pub version: PathVersion,
    /// Tokenized WebSocket URL.
    pub websocket_endpoint: String,
    /// Informational pricing.
    pub pricing: Pricing,
    /// The x402 requirement.
    pub payment_details: PaymentDetails,
    /// The stream.
    pub stream: StreamInfo,
    /// v1 compatibility: `x402Version`.
    #[serde(default)]
    pub x402_version: Option<u8>,
    /// v1 compatibility: `error`.
    #[serde(default)]
    pub error: Option<String>,
    /// v1 compatibility: `accepts`.
    #[serde(default)]
    pub accepts: Option<Vec<PaymentRequirementsV1>>,
}

/// The protocol name of the schema.
pub const PROTOCOL: &str = "ws402";

impl Schema {
    /// Parses a schema body leniently and checks `protocol`.
    pub fn from_json(body: &[u8]) -> Result<Schema, Error> {
        let s: Schema = serde_json::from_slice(body).map_err(|e| json_err("schema", e))?;
        if s.protocol != PROTOCOL {
            return Err(Error::Protocol(format!(
                "schema protocol is {:?}, expected {PROTOCOL:?}",
                s.protocol
            )));
        }
        Ok(s)
    }

    /// Checks that the document's `version` matches the request path's.
    pub fn check_version(&self, path: PathVersion) -> Result<(), Error> {
        if self.version != path {
            return Err(Error::VersionMismatch {
                url: "schema.version".into(),
                expected: path,
                found: self.version.number_str().into(),
            });
        }
        Ok(())
    }

    /// Strict JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for Schema {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Details<'a> {
            scheme: &'a str,
            network: String,
            asset: &'a str,
            pay_to: &'a str,
            max_amount_required: Amount,
            max_timeout_seconds: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            extra: Option<&'a Value>,
        }
        let d = &self.payment_details;
        let details = Details {
            scheme: &d.scheme,
            network: d.network.for_x402_version(self.version.x402_version()),
            asset: &d.asset,
            pay_to: &d.pay_to,
            max_amount_required: d.max_amount_required,
            max_timeout_seconds: d.max_timeout_seconds,
            extra: d.extra.as_ref(),
        };
        let mut st = s.serialize_struct("Schema", 9)?;
        st.serialize_field("protocol", &self.protocol)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("websocketEndpoint", &self.websocket_endpoint)?;
        st.serialize_field("pricing", &self.pricing)?;
        st.serialize_field("paymentDetails", &details)?;
        st.serialize_field("stream", &self.stream)?;
        if let Some(v) = self.x402_version {
            st.serialize_field("x402Version", &v)?;
        }
        if let Some(e) = &self.error {
            st.serialize_field("error", e)?;
        }
        if let Some(a) = &self.accepts {
            st.serialize_field("accepts", a)?;
        }
        st.end()
    }
}

/// The catalog a server sells (`GET /streams`): what `atomicstream streams`
/// lists, and what a client shows when it asked for an id the server does
/// not sell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// The streams, by id.
    pub streams: Vec<CatalogEntry>,
}

/// One stream of a [`Catalog`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogEntry {
    /// Stream id (the `{id}` of the schema URL).
    pub id: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Price per minute, in display units of `currency`.
    pub price_per_minute: String,
    /// Price of one slice, in display units.
    pub price_per_slice: String,
    /// Seconds one payment buys.
    pub slice_seconds: u64,
    /// Currency symbol (`USDC`).
    pub currency: String,
    /// Network (CAIP-2).
    pub network: String,
    /// Token contract.
    pub asset: String,
}

impl Catalog {
    /// Parses a `GET /streams` body.
    pub fn from_json(body: &[u8]) -> crate::Result<Catalog> {
        serde_json::from_slice(body).map_err(|e| json_err("catalog", e))
    }

    /// The ids, in the server's order.
    pub fn ids(&self) -> Vec<&str> {
        self.streams.iter().map(|s| s.id.as_str()).collect()
    }
}
