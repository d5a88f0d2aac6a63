//! Lua values <-> JSON, with depth, size and cycle checks and errors that name the path.
//!
//! Used for run results, `json.encode`/`decode`, params and the kv store. Written by hand rather
//! than through serde so that a deeply nested or cyclic table is an error, never a stack overflow.

use mlua::{Lua, Table, Value as LuaValue};
use serde_json::{Map, Number, Value};

/// Deepest nesting accepted in either direction.
pub const MAX_DEPTH: usize = 128;

/// Why a value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// Output would exceed the byte budget.
    TooLarge(u64),
    /// Anything else, with the path where it happened.
    Invalid(String),
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::TooLarge(n) => write!(f, "value is larger than {n} bytes as JSON"),
            ConvertError::Invalid(m) => f.write_str(m),
        }
    }
}

/// Converts a Lua value to JSON. `max_bytes` bounds the approximate serialized size.
pub fn to_json(value: &LuaValue, max_bytes: u64) -> Result<Value, ConvertError> {
    let mut c = ToJson { budget: max_bytes, used: 0, path: Vec::new(), stack: Vec::new() };
    c.value(value)
}

struct ToJson {
    budget: u64,
    used: u64,
    path: Vec<String>,
    stack: Vec<*const std::ffi::c_void>,
}

impl ToJson {
    fn path(&self) -> String {
        if self.path.is_empty() { "$".to_string() } else { format!("${}", self.path.concat()) }
    }

    fn charge(&mut self, n: u64) -> Result<(), ConvertError> {
        self.used += n;
        if self.used > self.budget { Err(ConvertError::TooLarge(self.budget)) } else { Ok(()) }
    }

    fn invalid(&self, what: &str) -> ConvertError {
        ConvertError::Invalid(format!("{what} at {}", self.path()))
    }

    fn value(&mut self, v: &LuaValue) -> Result<Value, ConvertError> {
        match v {
            LuaValue::Nil => {
                self.charge(8)?;
                Ok(Value::Null)
            }
            LuaValue::LightUserData(p) if p.0.is_null() => {
                self.charge(8)?;
                Ok(Value::Null)
            }
            LuaValue::Boolean(b) => {
                self.charge(8)?;
                Ok(Value::Bool(*b))
            }
            LuaValue::Integer(i) => {
                self.charge(20)?;
                Ok(Value::Number((*i).into()))
            }
            LuaValue::Number(n) => {
                self.charge(24)?;
                number(*n).ok_or_else(|| self.invalid(&format!("cannot encode {n} (NaN and infinity have no JSON form)")))
            }
            LuaValue::String(s) => {
                let bytes = s.as_bytes();
                self.charge(escaped_len(&bytes))?;
                match std::str::from_utf8(&bytes) {
                    Ok(s) => Ok(Value::String(s.to_string())),
                    Err(_) => Err(self.invalid("string is not valid UTF-8")),
                }
            }
            LuaValue::Table(t) => self.table(t),
            other => Err(self.invalid(&format!("cannot encode a {} as JSON", other.type_name()))),
        }
    }

    fn table(&mut self, t: &Table) -> Result<Value, ConvertError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.invalid(&format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let ptr = t.to_pointer();
        if self.stack.contains(&ptr) {
            return Err(self.invalid("table contains itself (a cycle)"));
        }
        self.stack.push(ptr);
        self.charge(16)?;
        let len = t.raw_len();
        let mut count = 0usize;
        let mut entries = Vec::new();
        for pair in t.pairs::<LuaValue, LuaValue>() {
            let (k, v) = pair.map_err(|e| self.invalid(&format!("cannot read table: {e}")))?;
            // Charged while collecting, so a huge table fails before it is copied.
            self.charge(8)?;
            count += 1;
            entries.push((k, v));
        }
        let is_array = (len > 0 && count == len) || (count == 0 && t.metatable().is_some_and(|m| is_array_marker(&m)));
        let out = if is_array {
            let mut items: Vec<(i64, LuaValue)> = entries
                .into_iter()
                .map(|(k, v)| {
                    (
                        match k {
                            LuaValue::Integer(i) => i,
                            LuaValue::Number(n) => n as i64,
                            _ => 0,
                        },
                        v,
                    )
                })
                .collect();
            items.sort_by_key(|(i, _)| *i);
            let mut arr = Vec::with_capacity(items.len());
            for (i, v) in items {
                self.path.push(format!("[{i}]"));
                arr.push(self.value(&v)?);
                self.path.pop();
                self.charge(1)?;
            }
            Value::Array(arr)
        } else {
            let mut map = Map::new();
            for (k, v) in entries {
                let key = match &k {
                    LuaValue::String(s) => match s.to_str() {
                        Ok(s) => s.to_string(),
                        Err(_) => return Err(self.invalid("table key is not valid UTF-8")),
                    },
                    LuaValue::Integer(i) => i.to_string(),
                    LuaValue::Number(n) if n.fract() == 0.0 => (*n as i64).to_string(),
                    other => return Err(self.invalid(&format!("table key of type {} cannot be a JSON key", other.type_name()))),
                };
                self.charge(escaped_len(key.as_bytes()) + 2)?;
                self.path.push(format!(".{key}"));
                let jv = self.value(&v)?;
                self.path.pop();
                map.insert(key, jv);
            }
            Value::Object(map)
        };
        self.stack.pop();
        Ok(out)
    }
}

/// Length of a string as a JSON string literal (quotes and escapes included).
fn escaped_len(bytes: &[u8]) -> u64 {
    2 + bytes
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<u64>()
}

fn is_array_marker(mt: &Table) -> bool {
    mt.raw_get::<bool>("__opslet_array").unwrap_or(false)
}

fn number(n: f64) -> Option<Value> {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Some(Value::Number((n as i64).into()))
    } else {
        Number::from_f64(n).map(Value::Number)
    }
}

/// Converts JSON to a Lua value. Arrays get the array marker so they encode back as arrays;
/// `null` becomes `json.null`.
pub fn to_lua(lua: &Lua, v: &Value, array_mt: &Table) -> mlua::Result<LuaValue> {
    to_lua_depth(lua, v, array_mt, 0)
}

fn to_lua_depth(lua: &Lua, v: &Value, array_mt: &Table, depth: usize) -> mlua::Result<LuaValue> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::runtime(format!("JSON nesting deeper than {MAX_DEPTH} levels")));
    }
    Ok(match v {
        Value::Null => LuaValue::NULL,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i.unsigned_abs() < (1u64 << 53) => LuaValue::Integer(i),
            _ => LuaValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua_depth(lua, item, array_mt, depth + 1)?)?;
            }
            t.set_metatable(Some(array_mt.clone()))?;
            LuaValue::Table(t)
        }
        Value::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, item) in map {
                t.raw_set(k.as_str(), to_lua_depth(lua, item, array_mt, depth + 1)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// Parses JSON straight into Lua values (no intermediate tree), so the Lua memory limit covers
/// what a decode builds. Nesting is limited by serde_json (128 levels).
pub fn decode_to_lua(lua: &Lua, bytes: &[u8], array_mt: &Table) -> Result<LuaValue, DecodeError> {
    let failure = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = Seed { lua, array_mt, failure: &failure };
    let parsed = serde::de::DeserializeSeed::deserialize(seed, &mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => match failure.into_inner() {
            Some(lua_err) => Err(DecodeError::Lua(lua_err)),
            None => Err(DecodeError::Json(e.to_string())),
        },
    }
}

/// Why `decode_to_lua` failed: bad JSON, or Lua refused a value (e.g. the memory limit).
#[derive(Debug)]
pub enum DecodeError {
    Json(String),
    Lua(mlua::Error),
}

#[derive(Clone, Copy)]
struct Seed<'a> {
    lua: &'a Lua,
    array_mt: &'a Table,
    failure: &'a std::cell::RefCell<Option<mlua::Error>>,
}

impl Seed<'_> {
    fn lua<T, E: serde::de::Error>(&self, r: mlua::Result<T>) -> Result<T, E> {
        r.map_err(|e| {
            let msg = e.to_string();
            self.failure.borrow_mut().get_or_insert(e);
            E::custom(msg)
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_> {
    type Value = LuaValue;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<LuaValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Seed<'_> {
    type Value = LuaValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<LuaValue, E> {
        Ok(LuaValue::NULL)
    }

    fn visit_bool<E>(self, b: bool) -> Result<LuaValue, E> {
        Ok(LuaValue::Boolean(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<LuaValue, E> {
        Ok(if i.unsigned_abs() < (1u64 << 53) { LuaValue::Integer(i) } else { LuaValue::Number(i as f64) })
    }

    fn visit_u64<E>(self, u: u64) -> Result<LuaValue, E> {
        Ok(if u < (1u64 << 53) { LuaValue::Integer(u as i64) } else { LuaValue::Number(u as f64) })
    }

    fn visit_f64<E>(self, f: f64) -> Result<LuaValue, E> {
        Ok(LuaValue::Number(f))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<LuaValue, E> {
        Ok(LuaValue::String(self.lua(self.lua.create_string(s))?))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<LuaValue, A::Error> {
        let t = self.lua(self.lua.create_table())?;
        let mut i = 0;
        while let Some(v) = seq.next_element_seed(self)? {
            i += 1;
            self.lua(t.raw_set(i, v))?;
        }
        self.lua(t.set_metatable(Some(self.array_mt.clone())))?;
        Ok(LuaValue::Table(t))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<LuaValue, A::Error> {
        let t = self.lua(self.lua.create_table())?;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let v = map.next_value_seed(self)?;
            let key = self.lua(self.lua.create_string(k.as_ref()))?;
            self.lua(t.raw_set(key, v))?;
        }
        Ok(LuaValue::Table(t))
    }
}

/// An in-memory writer that fails once more than `max` bytes are written.
pub struct CappedWriter {
    pub buf: Vec<u8>,
    pub max: usize,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.max {
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
