//! Trust tiers, from most to least trusted.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Trusted,
    Verified,
    Unknown,
    Suspicious,
    Compromised,
}

impl Tier {
    pub const ALL: [Self; 5] =
        [Self::Trusted, Self::Verified, Self::Unknown, Self::Suspicious, Self::Compromised];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Verified => "verified",
            Self::Unknown => "unknown",
            Self::Suspicious => "suspicious",
            Self::Compromised => "compromised",
        }
    }

    /// Whether restrictions written for `other` apply at this tier: they do
    /// at `other` itself and at every less trusted tier.
    pub fn at_or_below(self, other: Self) -> bool {
        self >= other
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            format!("unknown trust tier {s:?}; expected one of {}", Self::ALL.map(Self::as_str).join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_and_parsing() {
        assert!(Tier::Compromised.at_or_below(Tier::Suspicious));
        assert!(Tier::Suspicious.at_or_below(Tier::Suspicious));
        assert!(!Tier::Verified.at_or_below(Tier::Suspicious));
        assert_eq!("unknown".parse::<Tier>(), Ok(Tier::Unknown));
        assert!("meh".parse::<Tier>().unwrap_err().contains("trusted, verified"));
    }
}
