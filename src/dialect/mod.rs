//! API dialects olla translates between, as pure functions over bytes and JSON values: no I/O,
//! no actors, no clocks. The routes in `api` decide when to translate; the proxy pipeline moves
//! the bytes. Everything here treats its input as hostile: sizes are bounded, malformed input
//! becomes an error value (never a panic).

pub mod anthropic;
