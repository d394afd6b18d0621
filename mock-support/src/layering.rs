//! Configuration layering: a TOML document over another, tables merged key by key, arrays and plain values
//! replaced. Both mocks layer their file over generated defaults this way (then environment and flags on top).

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
}
