//! Configuration layering: a TOML document over another, tables merged key by key, arrays and plain values
//! replaced. Both mocks layer their file over generated defaults this way (then environment and flags on top):
//! [`layer`] takes the seed from the caller or the file's `server.seed`, generates the defaults with it,
//! merges the file over them and reads the result back as the configuration type.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A document that could not be layered.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The document is not TOML, or the layered result is not a valid configuration.
    #[error("{0}")]
    Parse(#[source] toml::de::Error),
    /// The defaults could not be represented as TOML.
    #[error("{0}")]
    Serialize(#[source] toml::ser::Error),
}

/// `server.seed` of a document, when it is a non-negative integer.
pub fn file_seed(doc: &toml::Table) -> Option<u64> {
    doc.get("server")
        .and_then(|s| s.get("seed"))
        .and_then(toml::Value::as_integer)
        .and_then(|s| u64::try_from(s).ok())
}

/// Layers the TOML document `text` over `defaults(seed)`, where the seed is `seed` if given, else the
/// document's `server.seed`. Returns the configuration and the seed used.
pub fn layer<T: Serialize + DeserializeOwned>(
    text: &str,
    seed: Option<u64>,
    defaults: impl FnOnce(Option<u64>) -> T,
) -> Result<(T, Option<u64>), LayerError> {
    let over: toml::Table = text.parse().map_err(LayerError::Parse)?;
    let seed = seed.or(file_seed(&over));
    let mut base = toml::Table::try_from(defaults(seed)).map_err(LayerError::Serialize)?;
    merge(&mut base, over);
    let config = base.try_into().map_err(LayerError::Parse)?;
    Ok((config, seed))
}

/// Layers `over` onto `base`.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_merge_arrays_and_values_replace() -> Result<(), toml::de::Error> {
        let mut base: toml::Table = "a = 1\nlist = [1, 2]\n[t]\nx = 1\ny = 2\n".parse()?;
        let over: toml::Table = "list = [3]\n[t]\ny = 5\nz = 6\n".parse()?;
        merge(&mut base, over);
        let want: toml::Table = "a = 1\nlist = [3]\n[t]\nx = 1\ny = 5\nz = 6\n".parse()?;
        assert_eq!(base, want);
        Ok(())
    }

    #[test]
    fn layer_takes_the_seed_from_the_caller_then_the_file() -> Result<(), LayerError> {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Server {
            seed: Option<u64>,
            name: String,
        }
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Conf {
            server: Server,
        }
        let defaults = |seed: Option<u64>| Conf {
            server: Server {
                seed,
                name: format!("gen-{seed:?}"),
            },
        };
        let (c, seed) = layer("[server]\nseed = 3\n", None, defaults)?;
        assert_eq!((c.server.name.as_str(), seed), ("gen-Some(3)", Some(3)));
        let (c, seed) = layer("[server]\nseed = 3\nname = \"x\"\n", Some(5), defaults)?;
        assert_eq!((c.server.name.as_str(), seed), ("x", Some(5)));
        assert!(matches!(
            layer("not toml =", None, defaults),
            Err(LayerError::Parse(_))
        ));
        Ok(())
    }
}
