//! Applications of the library: the servers `edgeloop` ships.

pub mod chat;
pub mod echo;
