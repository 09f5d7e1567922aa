//! The ONNX Runtime backend
