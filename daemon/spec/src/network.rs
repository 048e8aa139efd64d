//! The one validator of a network request, for `shoal network create` (its D-Bus options) and,
//! later, a stack file's `[networks.NAME]`: name, driver, subnet, attachable, labels.

use std::collections::BTreeMap;

use model::{Ipv4Subnet, NetworkDriver};

/// The option names `CreateNetwork` takes; labels come as `Label.<key>`.
pub const NETWORK_OPTIONS: &[&str] = &["Driver", "Subnet", "Attachable"];

/// A validated request for a new network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest {
    pub name: String,
    pub driver: NetworkDriver,
    /// `None`: the next free subnet of the cluster's address pool.
    pub subnet: Option<Ipv4Subnet>,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
}

/// The smallest subnet a network may have: a /29 leaves five addresses for tasks and VIPs.
pub const MAX_PREFIX_LEN: u8 = 29;
/// The largest: a /8.
pub const MIN_PREFIX_LEN: u8 = 8;

/// Checks `name` and `options`; every problem is reported, one per line.
pub fn network_request(
    name: &str,
    options: &BTreeMap<String, String>,
) -> Result<NetworkRequest, String> {
    let mut problems = Vec::new();
    if let Err(e) = crate::units::validate_name("network", name) {
        problems.push(e);
    } else if name == "ingress" || name == "host" || name == "bridge" || name == "none" {
        problems.push(format!(
            "network name \"{name}\" is reserved: choose another name"
        ));
    }
    let mut req = NetworkRequest {
        name: name.to_owned(),
        driver: NetworkDriver::Overlay,
        subnet: None,
        attachable: false,
        labels: BTreeMap::new(),
    };
    for (k, v) in options {
        match k.as_str() {
            "Driver" => match v.as_str() {
                "overlay" | "" => {}
                "bridge" | "host" | "macvlan" | "ipvlan" | "none" => problems.push(format!(
                    "network driver \"{v}\" is not supported yet: shoal networks are overlay networks"
                )),
                other => problems.push(format!(
                    "unknown network driver \"{other}\": use \"overlay\""
                )),
            },
            "Subnet" => match v.parse::<Ipv4Subnet>() {
                Ok(s) if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&s.prefix_len()) => {
                    problems.push(format!(
                        "subnet {v}: the prefix length must be between /{MIN_PREFIX_LEN} and /{MAX_PREFIX_LEN}"
                    ))
                }
                Ok(s) => req.subnet = Some(s),
                Err(e) => problems.push(format!("subnet \"{v}\": {e}")),
            },
            "Attachable" => match v.as_str() {
                "true" => req.attachable = true,
                "false" => req.attachable = false,
                _ => problems.push(format!(
                    "Attachable must be \"true\" or \"false\", not \"{v}\""
                )),
            },
            key => match key.strip_prefix("Label.") {
                Some(label) if !label.is_empty() => {
                    req.labels.insert(label.to_owned(), v.clone());
                }
                _ => problems.push(format!(
                    "unknown network option \"{key}\": use {} or Label.<key>",
                    NETWORK_OPTIONS.join(", ")
                )),
            },
        }
    }
    if problems.is_empty() {
        Ok(req)
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_good_request_is_read_whole() {
        let r = network_request(
            "backend",
            &opts(&[
                ("Driver", "overlay"),
                ("Subnet", "10.20.0.0/16"),
                ("Attachable", "true"),
                ("Label.team", "web"),
            ]),
        )
        .unwrap();
        assert_eq!(r.subnet.unwrap().to_string(), "10.20.0.0/16");
        assert!(r.attachable);
        assert_eq!(r.labels["team"], "web");
        assert_eq!(network_request("n", &opts(&[])).unwrap().subnet, None);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = network_request(
            "bad name",
            &opts(&[
                ("Driver", "macvlan"),
                ("Subnet", "10.0.0.1/33"),
                ("Attachable", "yes"),
                ("Color", "red"),
            ]),
        )
        .unwrap_err();
        for want in [
            "invalid network name",
            "\"macvlan\" is not supported yet",
            "subnet \"10.0.0.1/33\"",
            "Attachable must be",
            "unknown network option \"Color\"",
        ] {
            assert!(e.contains(want), "{want} missing from: {e}");
        }
        let e = network_request("ingress", &opts(&[("Subnet", "10.0.0.0/30")])).unwrap_err();
        assert!(e.contains("reserved") && e.contains("/29"), "{e}");
    }
}
