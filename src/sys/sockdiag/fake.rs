//! A scripted, recording [`SocketCounter`] for unit tests of the drain logic.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Counts, SockDiagError, SocketCounter, SocketFilter, SocketSample, Tally};

/// One call made to a [`FakeCounter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// [`SocketCounter::count`].
    Count {
        /// The filter passed.
        filter: SocketFilter,
        /// The idle threshold passed.
        idle_after: Option<Duration>,
    },
    /// [`SocketCounter::sample`].
    Sample {
        /// The filter passed.
        filter: SocketFilter,
    },
}

/// A [`SocketCounter`] that answers from a script of socket tables and records every call.
///
/// Each call consumes the next scripted reply: a table of sockets (what a dump of the whole
/// namespace would have returned; it is filtered and counted with the same rules as the real
/// adapter) or an error. A call with no reply left fails with
/// [`SockDiagError::FakeExhausted`], so a test notices a loop that polls more than expected.
#[derive(Debug, Default)]
pub struct FakeCounter {
    script: VecDeque<Result<Vec<SocketSample>, SockDiagError>>,
    calls: Vec<FakeCall>,
}

impl FakeCounter {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a reply: the sockets present at that call.
    pub fn push_sockets(&mut self, sockets: Vec<SocketSample>) -> &mut Self {
        self.script.push_back(Ok(sockets));
        self
    }

    /// Appends a failing reply.
    pub fn push_error(&mut self, error: SockDiagError) -> &mut Self {
        self.script.push_back(Err(error));
        self
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> &[FakeCall] {
        &self.calls
    }

    /// How many scripted replies are left.
    pub fn remaining(&self) -> usize {
        self.script.len()
    }

    fn next(&mut self, kind: &'static str) -> Result<Vec<SocketSample>, SockDiagError> {
        self.script
            .pop_front()
            .unwrap_or(Err(SockDiagError::FakeExhausted {
                call: self.calls.len(),
                kind,
            }))
    }
}

impl SocketCounter for FakeCounter {
    fn count(
        &mut self,
        f: &SocketFilter,
        idle_after: Option<Duration>,
    ) -> Result<Counts, SockDiagError> {
        self.calls.push(FakeCall::Count {
            filter: f.clone(),
            idle_after,
        });
        let sockets = self.next("count")?;
        let mut tally = Tally::new(f, idle_after);
        for s in &sockets {
            tally.add(s);
        }
        Ok(tally.finish())
    }

    fn sample(&mut self, f: &SocketFilter) -> Result<Vec<SocketSample>, SockDiagError> {
        self.calls.push(FakeCall::Sample { filter: f.clone() });
        let mut sockets = self.next("sample")?;
        sockets.retain(|s| f.matches(s.local) && s.state.is_served());
        Ok(sockets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::sockdiag::TcpState;
    use std::net::Ipv4Addr;

    fn sock(state: TcpState, local: &str, idle_ms: Option<u32>) -> SocketSample {
        SocketSample {
            state,
            local: local.parse().unwrap(),
            remote: "198.18.0.50:33000".parse().unwrap(),
            idle_ms,
        }
    }

    #[test]
    fn replays_script_applies_filter_and_records_calls() {
        let vip = SocketFilter::new(vec![Ipv4Addr::new(198, 18, 7, 1)], vec![80]);
        let mut fake = FakeCounter::new();
        fake.push_sockets(vec![
            sock(TcpState::Established, "198.18.7.1:80", Some(10)),
            sock(TcpState::Established, "198.18.7.1:80", Some(90_000)),
            sock(TcpState::Listen, "198.18.7.1:80", None),
            sock(TcpState::Established, "198.18.7.2:80", Some(10)),
        ])
        .push_sockets(vec![sock(TcpState::TimeWait, "198.18.7.1:80", None)])
        .push_sockets(vec![
            sock(TcpState::FinWait2, "198.18.7.1:80", None),
            sock(TcpState::Established, "198.18.7.1:81", Some(1)),
        ]);

        let c = fake.count(&vip, Some(Duration::from_secs(30))).unwrap();
        assert_eq!((c.total, c.idle, c.active()), (2, 1, 1));
        assert_eq!(c.by_state.get(&TcpState::Listen), Some(&1));

        let c = fake.count(&vip, None).unwrap();
        assert_eq!((c.total, c.idle), (0, 0));

        let s = fake.sample(&vip).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].state, TcpState::FinWait2);

        assert_eq!(
            fake.calls(),
            &[
                FakeCall::Count {
                    filter: vip.clone(),
                    idle_after: Some(Duration::from_secs(30))
                },
                FakeCall::Count {
                    filter: vip.clone(),
                    idle_after: None
                },
                FakeCall::Sample {
                    filter: vip.clone()
                },
            ]
        );
        assert_eq!(fake.remaining(), 0);
        match fake.count(&vip, None) {
            Err(SockDiagError::FakeExhausted {
                call: 4,
                kind: "count",
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scripted_errors_are_returned_in_order() {
        let mut fake = FakeCounter::new();
        fake.push_error(SockDiagError::Kernel {
            seq: 1,
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        })
        .push_sockets(vec![]);
        let f = SocketFilter::default();
        assert!(matches!(
            fake.count(&f, None),
            Err(SockDiagError::Kernel { .. })
        ));
        assert_eq!(fake.count(&f, None).unwrap(), Counts::default());
    }
}
