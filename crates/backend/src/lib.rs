//! The synchronous Backend trait and the instance-thread wrapper
