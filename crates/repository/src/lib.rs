//! Model repository scan, config.pbtxt parsing, auto-complete and validation
