//! The tensor datatypes of the protocol, and their names on the wire and in config.pbtxt.

use tern_proto::inference::DataType as ConfigType;

/// A KServe v2 tensor datatype. BYTES elements are variable-length; every other type has a
/// fixed element size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol's name: "FP32", "BYTES", ...
    pub fn wire_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses the protocol's name; `None` for anything else.
    pub fn from_wire_name(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.wire_name() == name)
    }

    /// The config.pbtxt enum (`TYPE_FP32`, `TYPE_STRING` for BYTES).
    pub fn to_config(self) -> ConfigType {
        match self {
            DataType::Bool => ConfigType::TypeBool,
            DataType::Uint8 => ConfigType::TypeUint8,
            DataType::Uint16 => ConfigType::TypeUint16,
            DataType::Uint32 => ConfigType::TypeUint32,
            DataType::Uint64 => ConfigType::TypeUint64,
            DataType::Int8 => ConfigType::TypeInt8,
            DataType::Int16 => ConfigType::TypeInt16,
            DataType::Int32 => ConfigType::TypeInt32,
            DataType::Int64 => ConfigType::TypeInt64,
            DataType::Fp16 => ConfigType::TypeFp16,
            DataType::Bf16 => ConfigType::TypeBf16,
            DataType::Fp32 => ConfigType::TypeFp32,
            DataType::Fp64 => ConfigType::TypeFp64,
            DataType::Bytes => ConfigType::TypeString,
        }
    }

    /// From the config.pbtxt enum; `None` for TYPE_INVALID or an unknown number.
    pub fn from_config(value: i32) -> Option<DataType> {
        let t = ConfigType::try_from(value).ok()?;
        DataType::ALL.into_iter().find(|d| d.to_config() == t)
    }

    /// Bytes per element; `None` for BYTES.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_wire_name(d.wire_name()), Some(d));
            assert_eq!(DataType::from_config(d.to_config() as i32), Some(d));
        }
        assert_eq!(DataType::from_wire_name("fp32"), None);
        assert_eq!(DataType::from_config(0), None);
        assert_eq!(DataType::from_config(99), None);
        assert_eq!(DataType::Bytes.to_config(), ConfigType::TypeString);
    }
}
