//! What a client may hold before it has proved anything: connections per
//! address (so one client cannot take every slot), and the bytes of large
//! request bodies being received (reserved when their head is admitted, so
//! slow or unauthenticated uploads cannot pin memory).

use super::Server;
use crate::dialect::rest;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::ConnId;
use crate::time::Timestamp;
use crate::wire::http::Request;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Default)]
pub(crate) struct Admission {
    per_address: HashMap<IpAddr, usize>,
    /// Body bytes reserved per connection (at most one body at a time).
    bodies: HashMap<ConnId, usize>,
    body_bytes: usize,
}

impl Admission {
    /// Counts a connection from `ip`; false if that address is now over `cap`.
    pub(crate) fn connect(&mut self, ip: IpAddr, cap: usize) -> bool {
        let n = self.per_address.entry(ip).or_insert(0);
        *n += 1;
        *n <= cap
    }

    pub(crate) fn disconnect(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
    }

    fn reserve_body(&mut self, conn: ConnId, bytes: usize, cap: usize) -> bool {
        self.release_body(conn);
        if self.body_bytes.saturating_add(bytes) > cap {
            return false;
        }
        self.body_bytes += bytes;
        self.bodies.insert(conn, bytes);
        true
    }

    pub(crate) fn release_body(&mut self, conn: ConnId) {
        if let Some(n) = self.bodies.remove(&conn) {
            self.body_bytes -= n;
        }
    }

    #[cfg(test)]
    pub(crate) fn body_bytes(&self) -> usize {
        self.body_bytes
    }
}

impl Server {
    /// A request head announced a large body (`size` bytes; `None`: chunked):
    /// checks its route and credentials, and reserves room for the body, all
    /// before a byte of it is read. Returns how many body bytes the request
    /// may send.
    pub fn admit_body(
        &mut self,
        conn: ConnId,
        head: &Request,
        size: Option<usize>,
        now: Timestamp,
    ) -> Result<usize> {
        let limit = rest::admit_body(self, conn, head, size, now)?;
        let cap = self
            .config
            .max_body_bytes_in_flight
            .max(self.config.max_body_bytes);
        if !self
            .admission
            .reserve_body(conn, size.unwrap_or(limit).min(limit), cap)
        {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "too many large request bodies are being received ({cap} bytes, \
                     --max-body-bytes-in-flight); try again shortly"
                ),
            ));
        }
        Ok(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_counts_come_and_go() {
        let mut a = Admission::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(a.connect(ip, 2));
        assert!(a.connect(ip, 2));
        assert!(!a.connect(ip, 2));
        a.disconnect(ip);
        a.disconnect(ip);
        assert!(a.connect(ip, 2));
        a.disconnect(ip);
        a.disconnect(ip);
        assert!(a.per_address.is_empty());
    }

    #[test]
    fn body_reservations_share_one_budget() {
        let mut a = Admission::default();
        assert!(a.reserve_body(ConnId(1), 60, 100));
        assert!(!a.reserve_body(ConnId(2), 60, 100));
        a.release_body(ConnId(1));
        assert!(a.reserve_body(ConnId(2), 60, 100));
        assert_eq!(a.body_bytes(), 60);
        // A connection's next body replaces its reservation.
        assert!(a.reserve_body(ConnId(2), 90, 100));
        assert_eq!(a.body_bytes(), 90);
    }
}
