//! `choices!`: an enum of named settings values whose deserialization error lists them all
//! (`unknown value "xml"; expected one of "text", "json"`), whatever the source.

/// Declares an enum of unit variants, each spelled as a string in the configuration, with a
/// `Deserialize` that names every accepted value when given another one.
macro_rules! choices {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                match text.as_str() {
                    $($text => Ok(Self::$variant),)+
                    other => Err(<D::Error as serde::de::Error>::custom(format!(
                        "unknown value {other:?}; expected one of {}",
                        [$(concat!("\"", $text, "\"")),+].join(", ")
                    ))),
                }
            }
        }
    };
}

pub(crate) use choices;

#[cfg(test)]
mod tests {
    choices! {
        #[derive(Debug, PartialEq)]
        enum Colour {
            /// Red.
            Red = "red",
            Blue = "blue",
        }
    }

    #[test]
    fn an_unknown_value_lists_the_accepted_ones() {
        assert_eq!(serde_json::from_str::<Colour>("\"blue\"").unwrap(), Colour::Blue);
        let error = serde_json::from_str::<Colour>("\"green\"").unwrap_err().to_string();
        assert!(
            error.contains(r#"unknown value "green"; expected one of "red", "blue""#),
            "{error}"
        );
    }
}
