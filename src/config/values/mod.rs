//! The configuration's validated value types: each parses (and rejects, with a message naming
//! the value) in its own deserializer, so an invalid value is unrepresentable after loading.

use std::fmt;

use serde::Deserialize;

/// Error text of a rejected value; serde_yaml adds the key path and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue(String);

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidValue {}

fn reject<T>(message: String) -> Result<T, InvalidValue> {
    Err(InvalidValue(message))
}

/// Implements `Deserialize` (through the type's `TryFrom<String>`) and `Display` for a validated
/// scalar newtype.
///
/// Not `#[serde(try_from = "String")]`: with that attribute the check runs after serde_yaml's
/// scalar deserializer has returned, so serde_yaml blames the enclosing mapping (`vips[0]` at the
/// line of its first key). Validating inside the visitor makes the error carry the value's own key
/// path and position (`vips[0].address`, line 3, column 14).
macro_rules! scalar_newtype {
    ($ty:ident, $expecting:literal, |$s:ident| $display:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$ty, E> {
                        $ty::try_from(text.to_string()).map_err(E::custom)
                    }
                }
                // serde_yaml hands any plain scalar (80, 0x10, 10s) to deserialize_str as text.
                d.deserialize_str(Visitor)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let $s = self;
                write!(f, "{}", $display)
            }
        }
        impl serde::Serialize for $ty {
            /// As written in the configuration (what `Display` prints, which parses back).
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// Deserializes a sequence of `T` and validates the whole list with `U: TryFrom<Vec<T>>` inside the
/// visitor, for the same reason as [`scalar_newtype!`]: so the error names the list's own key.
fn deserialize_checked_seq<'de, D, T, U>(d: D, expecting: &'static str) -> Result<U, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
    U: TryFrom<Vec<T>, Error = InvalidValue>,
{
    struct Visitor<T, U>(&'static str, std::marker::PhantomData<(T, U)>);
    impl<'de, T, U> serde::de::Visitor<'de> for Visitor<T, U>
    where
        T: Deserialize<'de>,
        U: TryFrom<Vec<T>, Error = InvalidValue>,
    {
        type Value = U;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<U, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            U::try_from(items).map_err(serde::de::Error::custom)
        }
    }
    d.deserialize_seq(Visitor(expecting, std::marker::PhantomData))
}

mod agent;
mod durations;
mod firewall;
mod net;

pub use agent::*;
pub use durations::*;
pub use firewall::*;
pub use net::*;
