//! The tracing deserializer: asked for a type, it notes what each
//! `deserialize_*` call wants in a [`Shape`] and answers with a sample
//! (0, "", false, the first variant, one element per list).

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

use super::Shape;

/// How deep the tracer follows nested types (a recursive type stops here).
const MAX_DEPTH: u8 = 16;

/// The tracer's only error: the type refused a sample, or nests too deep.
#[derive(Debug)]
pub(super) struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// Notes in `shape` what it is asked to deserialize, and answers a sample.
pub(super) struct Tracer<'a> {
    pub(super) shape: &'a mut Shape,
    pub(super) depth: u8,
}

/// A tracer for a value nested in one at `depth`, writing into `shape`.
fn nested(shape: &mut Shape, depth: u8) -> Result<Tracer<'_>, TraceError> {
    if depth >= MAX_DEPTH {
        return Err(TraceError("nested too deep to describe".to_owned()));
    }
    Ok(Tracer { shape, depth: depth + 1 })
}

impl Tracer<'_> {
    fn int<'de, V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Int(name);
        visitor.visit_u8(0)
    }
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Any;
        visitor.visit_unit()
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Bool;
        visitor.visit_bool(false)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.int("i8", visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.int("i16", visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.int("i32", visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.int("i64", visitor)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.int("u8", visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.int("u16", visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.int("u32", visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.int("u64", visitor)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Float;
        visitor.visit_f32(0.0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Float;
        visitor.visit_f64(0.0)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Str;
        visitor.visit_char('a')
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Str;
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Bytes;
        visitor.visit_bytes(&[])
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let mut inner = Shape::Any;
        let value = visitor.visit_some(nested(&mut inner, self.depth)?)?;
        *self.shape = Shape::Option(Box::new(inner));
        Ok(value)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Unit;
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let mut shapes = vec![Shape::Any];
        let value = visitor.visit_seq(Items { shapes: &mut shapes, next: 0, depth: self.depth })?;
        *self.shape = Shape::Seq(Box::new(shapes.remove(0)));
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, TraceError> {
        let mut shapes = vec![Shape::Any; len.min(64)];
        let value = visitor.visit_seq(Items { shapes: &mut shapes, next: 0, depth: self.depth })?;
        *self.shape = Shape::Tuple(shapes);
        Ok(value)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let (mut key, mut value) = (Shape::Any, Shape::Any);
        let map = Entry { key: &mut key, value: &mut value, done: false, depth: self.depth };
        let out = visitor.visit_map(map)?;
        *self.shape = Shape::Map(Box::new(key), Box::new(value));
        Ok(out)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut shapes = vec![Shape::Any; fields.len()];
        let value = visitor.visit_map(Fields { fields, shapes: &mut shapes, next: 0, depth: self.depth })?;
        *self.shape = Shape::Struct(fields.iter().copied().zip(shapes).collect());
        Ok(value)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        *self.shape = Shape::Enum(variants);
        let first = variants.first().ok_or_else(|| TraceError("an enum without variants".to_owned()))?;
        visitor.visit_enum(FirstVariant { name: first, depth: self.depth })
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! { i128 u128 identifier }
}

/// The elements of a list or tuple, each traced.
struct Items<'a> {
    shapes: &'a mut [Shape],
    next: usize,
    depth: u8,
}

impl<'de> de::SeqAccess<'de> for Items<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, TraceError> {
        let Some(shape) = self.shapes.get_mut(self.next) else { return Ok(None) };
        self.next += 1;
        seed.deserialize(nested(shape, self.depth)?).map(Some)
    }
}

/// One traced entry of a map.
struct Entry<'a> {
    key: &'a mut Shape,
    value: &'a mut Shape,
    done: bool,
    depth: u8,
}

impl<'de> de::MapAccess<'de> for Entry<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        seed.deserialize(nested(self.key, self.depth)?).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        seed.deserialize(nested(self.value, self.depth)?)
    }
}

/// A struct's fields by name, each value traced.
struct Fields<'a> {
    fields: &'static [&'static str],
    shapes: &'a mut [Shape],
    next: usize,
    depth: u8,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        let Some(name) = self.fields.get(self.next) else { return Ok(None) };
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        let index = self.next;
        self.next += 1;
        seed.deserialize(nested(&mut self.shapes[index], self.depth)?)
    }
}

/// An enum's first variant, with its contents traced (not recorded: the
/// enum is described by its variant names).
struct FirstVariant {
    name: &'static str,
    depth: u8,
}

impl<'de> de::EnumAccess<'de> for FirstVariant {
    type Error = TraceError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), TraceError> {
        let variant = seed.deserialize(self.name.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for FirstVariant {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, TraceError> {
        let mut ignored = Shape::Any;
        seed.deserialize(nested(&mut ignored, self.depth)?)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, TraceError> {
        let mut ignored = Shape::Any;
        de::Deserializer::deserialize_tuple(nested(&mut ignored, self.depth)?, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut ignored = Shape::Any;
        de::Deserializer::deserialize_struct(nested(&mut ignored, self.depth)?, "", fields, visitor)
    }
}
