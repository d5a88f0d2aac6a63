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
                self.charge(4)?;
                Ok(Value::Null)
            }
            LuaValue::LightUserData(p) if p.0.is_null() => {
                self.charge(4)?;
                Ok(Value::Null)
            }
            LuaValue::Boolean(b) => {
                self.charge(5)?;
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
                self.charge(bytes.len() as u64 + 2)?;
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
        self.charge(2)?;
        let len = t.raw_len();
        let mut count = 0usize;
        let mut entries = Vec::new();
        for pair in t.pairs::<LuaValue, LuaValue>() {
            let (k, v) = pair.map_err(|e| self.invalid(&format!("cannot read table: {e}")))?;
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
                self.charge(key.len() as u64 + 4)?;
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
