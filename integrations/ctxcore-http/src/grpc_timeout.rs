//! The grpc-timeout codec.
