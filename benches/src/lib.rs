//! Benchmark binaries. `ceiling` runs a model in-process through the same ONNX Runtime backend
//! the node uses, to measure the most any server can reach on this machine.
