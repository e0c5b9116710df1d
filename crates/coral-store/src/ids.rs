//! Trace and span ids: fixed-size byte arrays, written as lowercase hex.

use std::fmt;
use std::str::FromStr;

/// An id that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {input:?} ({}): expected {digits} hex digits, not all zero", described(.input))]
pub struct IdError {
    pub kind: &'static str,
    pub input: String,
    pub digits: usize,
}

/// What was given, so a cut-off or over-long paste is seen at once.
fn described(input: &str) -> String {
    let n = input.trim().chars().count();
    if input.trim().chars().all(|c| c.is_ascii_hexdigit()) {
        format!("{n} hex digits")
    } else {
        format!("{n} characters, not all hex digits")
    }
}

macro_rules! id_type {
    ($name:ident, $len:literal, $kind:literal) => {
        #[doc = concat!("A ", $kind, " (", stringify!($len), " bytes, never all zero).")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// From raw bytes, as OTLP carries them; `None` for a wrong length or all zeros.
            pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
                let array: [u8; $len] = bytes.try_into().ok()?;
                (array != [0; $len]).then_some(Self(array))
            }

            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let err = || IdError {
                    kind: $kind,
                    input: s.to_string(),
                    digits: $len * 2,
                };
                let bytes = hex::decode(s.trim()).map_err(|_| err())?;
                Self::from_bytes(&bytes).ok_or_else(err)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }
    };
}

id_type!(TraceId, 16, "trace id");
id_type!(SpanId, 8, "span id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let t: TraceId = "0af7651916cd43dd8448eb211c80319c".parse().unwrap();
        assert_eq!(t.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert!("0af7".parse::<TraceId>().is_err());
        assert!("zz".repeat(16).parse::<TraceId>().is_err());
        let zero = "0".repeat(32).parse::<TraceId>().unwrap_err();
        assert!(zero.to_string().contains("32 hex digits"));
        // How many digits were given: a cut-off paste shows at once.
        let short = "0af7651916cd43dd8448eb211c8031"
            .parse::<TraceId>()
            .unwrap_err();
        assert!(
            short.to_string().contains("(30 hex digits): expected 32"),
            "{short}"
        );
        let odd = "trace-1".parse::<TraceId>().unwrap_err();
        assert!(
            odd.to_string()
                .contains("(7 characters, not all hex digits)"),
            "{odd}"
        );
        assert!(SpanId::from_bytes(&[1; 8]).is_some());
        assert!(SpanId::from_bytes(&[1; 7]).is_none());
    }
}
