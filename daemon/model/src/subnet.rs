//! IPv4 subnets in CIDR notation: the node bridge's subnet and the overlay networks' subnets.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network such as `10.231.0.0/16`: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Subnet {
    /// The network address (host bits all zero).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length (`16` in `10.231.0.0/16`).
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The first host address, used as the bridge's gateway address (`10.231.0.1`).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `addr` lies inside this subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(&self, other: &Ipv4Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The broadcast address (host bits all one).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix_len))
    }

    /// The subnet of `prefix_len` at `network` (host bits are cleared), if the length is valid.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Subnet> {
        (8..=30).contains(&prefix_len).then(|| Ipv4Subnet {
            network: Ipv4Addr::from(u32::from(network) & mask(prefix_len)),
            prefix_len,
        })
    }
}

impl serde::Serialize for Ipv4Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n)),
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Subnet {
    type Err = String;

    /// Parses `A.B.C.D/N`. The address must be the network address, and the subnet must leave room
    /// for a gateway and at least one task (`N <= 30`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| "expected CIDR notation such as 10.231.0.0/16".to_string())?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        if !(8..=30).contains(&prefix_len) {
            return Err(format!(
                "prefix length {prefix_len} is out of range: use /8 to /30"
            ));
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix_len));
        if network != addr {
            return Err(format!(
                "{addr} has host bits set: use the network address {network}/{prefix_len}"
            ));
        }
        Ok(Ipv4Subnet {
            network,
            prefix_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_gateway() {
        let s: Ipv4Subnet = "10.231.0.0/16".parse().unwrap();
        assert_eq!(s.network(), Ipv4Addr::new(10, 231, 0, 0));
        assert_eq!(s.prefix_len(), 16);
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(s.to_string(), "10.231.0.0/16");
        assert!(s.contains(Ipv4Addr::new(10, 231, 255, 254)));
        assert!(!s.contains(Ipv4Addr::new(10, 232, 0, 1)));
    }

    #[test]
    fn rejects_bad_subnets() {
        for bad in [
            "10.231.0.0",
            "10.231.0.1/16",
            "10.231.0.0/31",
            "10.231.0.0/4",
            "x/16",
            "10.0.0.0/y",
        ] {
            assert!(
                bad.parse::<Ipv4Subnet>().is_err(),
                "{bad} should be refused"
            );
        }
    }
}
