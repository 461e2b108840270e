//! The protocol-aware Electrum front: newline framing, JSON-RPC parsing of only what policy needs,
//! the method table with its costs, reply rewriting, the session loop and the WebSocket transport.

pub mod frame;
pub mod jsonrpc;
pub mod methods;
pub mod rewrite;
pub mod session;
pub mod settings;
pub mod ws;
