//! `--net` on the vz engine: Virtualization.framework's NAT (the host's shared network, DHCP
//! from macOS), with an optional fixed MAC address. The other backends are refused with the
//! reason, so a command line written for hvrun's own engine fails clearly instead of silently
//! getting a different network.

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// The I/G bit (IEEE 802-2014 §8.2.2): a group address cannot be a NIC's own.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The U/L bit: set for addresses not assigned by a vendor (what VMs should use).
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 2 == 2
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("mac={text}: expected six hex bytes like 52:54:00:12:34:56");
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = MacAddress(bytes);
        if mac.is_multicast() {
            return Err(format!(
                "mac={text}: a multicast address (lowest bit of the first byte set) cannot be a \
                 NIC's address; use e.g. 52:54:00:12:34:56"
            ));
        }
        Ok(mac)
    }
}

/// One network device of a VZ guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VzNet {
    /// VZ's NAT attachment; `mac: None` lets the framework pick a random locally administered
    /// address.
    Nat { mac: Option<MacAddress> },
}

impl FromStr for VzNet {
    type Err = String;

    /// Parses `nat[,mac=XX:XX:XX:XX:XX:XX]`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(',');
        let backend = parts.next().unwrap_or_default();
        let (kind, _value) = backend.split_once('=').unwrap_or((backend, ""));
        match kind {
            "nat" if !backend.contains('=') => {}
            "tap" => {
                return Err(format!(
                    "--net {spec}: tap devices are a Linux feature; the vz engine's network is \
                     `--net nat` (macOS's shared network)"
                ))
            }
            "bridged" => {
                return Err(format!(
                    "--net {spec}: bridging needs the com.apple.vm.networking entitlement, which \
                     Apple grants only to apps it signs; use `--net nat`"
                ))
            }
            "unixgram" | "unixstream" | "vmnet" => {
                return Err(format!(
                    "--net {spec}: the vz engine supports only `--net nat`; socket and vmnet \
                     backends belong to hvrun's own engine (--engine vmm)"
                ))
            }
            _ => return Err(format!("--net {spec}: unknown backend (the vz engine has `nat`)")),
        }
        let mut mac = None;
        for option in parts {
            match option.split_once('=') {
                Some(("mac", text)) => {
                    mac = Some(text.parse().map_err(|e| format!("--net {spec}: {e}"))?)
                }
                _ => {
                    return Err(format!("--net {spec}: unknown option `{option}` (expected mac=)"))
                }
            }
        }
        Ok(VzNet::Nat { mac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses() {
        let mac: MacAddress = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert!(mac.is_locally_administered());
        assert!(!"00:1b:63:00:00:01".parse::<MacAddress>().unwrap().is_locally_administered());
        for bad in
            ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:11", "5:54:00:ab:cd:0f", "zz:54:00:ab:cd:0f"]
        {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad}");
        }
        let e = "01:00:5e:00:00:01".parse::<MacAddress>().unwrap_err();
        assert!(e.contains("multicast"), "{e}");
    }

    #[test]
    fn net_specs() {
        assert_eq!("nat".parse::<VzNet>(), Ok(VzNet::Nat { mac: None }));
        let mac = Some(MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!("nat,mac=52:54:00:12:34:56".parse::<VzNet>(), Ok(VzNet::Nat { mac }));
        let err = |s: &str| s.parse::<VzNet>().unwrap_err();
        assert!(err("tap=tap0").contains("tap devices are a Linux feature"));
        assert!(err("bridged=en0").contains("com.apple.vm.networking"));
        assert!(err("unixgram=/tmp/s").contains("--engine vmm"));
        assert!(err("nat,mtu=9000").contains("unknown option `mtu=9000`"));
        assert!(err("nat=1").contains("unknown backend"));
        assert!(err("slirp").contains("unknown backend"));
        assert!(err("nat,mac=01:00:5e:00:00:01").contains("multicast"));
    }
}
