//! `tailgate router`: the stateless first tier that hashes each span's routing key onto a
//! consistent-hash ring of workers.

pub mod ring;

#[cfg(test)]
mod tests;
