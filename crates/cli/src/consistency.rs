//! `--consistency`: which replica answers a read (`shoal.v1.Consistency`).

use clap::{Args, ValueEnum};
use serde::Serialize;
use shoal_proto::v1;

/// The `--consistency` option of every command that reads a collection.
#[derive(Debug, Clone, Copy, Args)]
pub struct ConsistencyArg {
    /// Which replica answers.
    #[arg(long, value_enum, default_value_t = Consistency::Strong)]
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// The collection's Raft leader, after confirming it still leads: sees every write
    /// acknowledged before the request.
    Strong,
    /// Any replica, the node's own first: faster and available without a leader, but may miss
    /// the latest acknowledged writes.
    Eventual,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::Eventual => "eventual",
        }
    }
}

impl ConsistencyArg {
    /// The `consistency` field of a request.
    pub fn to_wire(self) -> i32 {
        let level = match self.consistency {
            Consistency::Strong => v1::Consistency::Strong,
            Consistency::Eventual => v1::Consistency::Eventual,
        };
        level.into()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Read {
        #[command(flatten)]
        read: ConsistencyArg,
    }

    fn wire(args: &[&str]) -> Result<i32, clap::Error> {
        let argv = std::iter::once("read").chain(args.iter().copied());
        Ok(Read::try_parse_from(argv)?.read.to_wire())
    }

    #[test]
    fn strong_by_default_and_eventual_on_request() {
        assert_eq!(wire(&[]).unwrap(), i32::from(v1::Consistency::Strong));
        assert_eq!(
            wire(&["--consistency", "strong"]).unwrap(),
            i32::from(v1::Consistency::Strong)
        );
        assert_eq!(
            wire(&["--consistency", "eventual"]).unwrap(),
            i32::from(v1::Consistency::Eventual)
        );
        assert!(wire(&["--consistency", "weak"]).is_err());
    }
}
