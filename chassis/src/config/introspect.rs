//! The field names of a serde struct, read from its `Deserialize` implementation, so the
//! sections a loader splits off are derived from the type rather than listed by hand.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

/// The names of the fields `T` deserializes, in declaration order; empty when `T` is not a
/// struct with named fields.
pub(crate) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut names));
    names
}

/// A deserializer that records the fields it is asked for and fails.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only the field names of a struct are read"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        self.deserialize_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(default)]
    #[allow(dead_code)]
    #[derive(Default)]
    struct Sections {
        http: u16,
        #[serde(rename = "admin_port")]
        admin: u16,
    }

    #[test]
    fn reads_the_serialized_field_names() {
        assert_eq!(field_names::<Sections>(), ["http", "admin_port"]);
        assert!(field_names::<()>().is_empty());
        assert!(field_names::<String>().is_empty());
    }
}
