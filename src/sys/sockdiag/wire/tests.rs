use super::*;

/// Builds a reply datagram the way the kernel lays it out.
#[derive(Default)]
pub(crate) struct Reply(pub Vec<u8>);

impl Reply {
    fn header(&mut self, len: usize, kind: u16, flags: u16, seq: u32) {
        self.0.extend_from_slice(&(len as u32).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(&flags.to_ne_bytes());
        self.0.extend_from_slice(&seq.to_ne_bytes());
        self.0.extend_from_slice(&4242u32.to_ne_bytes());
    }

    /// One socket: AF_INET unless `v6` is given (then a 16-byte address pair).
    pub(crate) fn sock(
        mut self,
        seq: u32,
        state: u8,
        local: &str,
        remote: &str,
        info: Option<(u32, u32)>,
    ) -> Self {
        let local: SocketAddrV4 = local.parse().unwrap();
        let remote: SocketAddrV4 = remote.parse().unwrap();
        let mut body = vec![AF_INET, state, 0, 0];
        body.extend_from_slice(&local.port().to_be_bytes());
        body.extend_from_slice(&remote.port().to_be_bytes());
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&local.ip().octets());
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&remote.ip().octets());
        body.extend_from_slice(&src);
        body.extend_from_slice(&dst);
        body.extend_from_slice(&[0; 12]); // if, cookie
        body.extend_from_slice(&[0; 20]); // expires, rqueue, wqueue, uid, inode
                                          // An unrelated attribute first (INET_DIAG_SHUTDOWN, 1 byte + padding).
        body.extend_from_slice(&5u16.to_ne_bytes());
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]);
        if let Some((data, ack)) = info {
            let mut ti = vec![0u8; std::mem::size_of::<libc::tcp_info>()];
            ti[TCPI_LAST_DATA_RECV..TCPI_LAST_DATA_RECV + 4].copy_from_slice(&data.to_ne_bytes());
            ti[TCPI_LAST_ACK_RECV..TCPI_LAST_ACK_RECV + 4].copy_from_slice(&ack.to_ne_bytes());
            body.extend_from_slice(&((4 + ti.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
            body.extend_from_slice(&ti);
            body.resize(align4(body.len()), 0);
        }
        self.header(NLMSG_HDRLEN + body.len(), SOCK_DIAG_BY_FAMILY, 2, seq);
        self.0.extend_from_slice(&body);
        self
    }

    pub(crate) fn done(mut self, seq: u32, err: i32) -> Self {
        self.header(NLMSG_HDRLEN + 4, NLMSG_DONE, 2, seq);
        self.0.extend_from_slice(&err.to_ne_bytes());
        self
    }

    pub(crate) fn error(mut self, seq: u32, err: i32) -> Self {
        self.header(NLMSG_HDRLEN + 4 + NLMSG_HDRLEN, NLMSG_ERROR, 0, seq);
        self.0.extend_from_slice(&err.to_ne_bytes());
        self.0.extend_from_slice(&[0; NLMSG_HDRLEN]); // the offending request's header
        self
    }
}

fn collect(dgram: &[u8], seq: Option<u32>) -> (Result<Progress, SockDiagError>, Vec<SocketSample>) {
    let mut v = Vec::new();
    let r = parse_datagram(dgram, seq, &mut |s| v.push(*s));
    (r, v)
}

#[test]
fn tcp_info_offsets_are_the_kernel_abi() {
    assert_eq!((TCPI_LAST_DATA_RECV, TCPI_LAST_ACK_RECV), (52, 56));
    assert_eq!((REQ_V2_LEN, DIAG_MSG_LEN), (56, 72));
}

#[test]
fn multipart_dump_spans_datagrams_until_done() {
    let d1 = Reply::default()
        .sock(7, 1, "198.18.7.1:80", "198.18.7.10:40000", Some((1500, 20)))
        .sock(7, 12, "198.18.7.1:81", "198.18.7.10:40001", None);
    let d2 = Reply::default()
        .sock(7, 8, "198.18.7.1:80", "198.18.7.11:5000", Some((30, 3000)))
        .done(7, 0);
    let (r1, v1) = collect(&d1.0, Some(7));
    assert_eq!(r1.unwrap(), Progress::More);
    assert_eq!(v1.len(), 2);
    assert_eq!(v1[0].state, TcpState::Established);
    assert_eq!(v1[0].local, "198.18.7.1:80".parse().unwrap());
    assert_eq!(v1[0].remote, "198.18.7.10:40000".parse().unwrap());
    assert_eq!(
        v1[0].idle_ms,
        Some(20),
        "idle is the smaller of data and ack"
    );
    assert_eq!(
        v1[1].state,
        TcpState::SynRecv,
        "request socks read as SYN_RECV"
    );
    assert_eq!(v1[1].idle_ms, None);
    let (r2, v2) = collect(&d2.0, Some(7));
    assert_eq!(r2.unwrap(), Progress::Done);
    assert_eq!(v2[0].state, TcpState::CloseWait);
    assert_eq!(v2[0].idle_ms, Some(30));
}

#[test]
fn stale_messages_of_an_earlier_dump_are_skipped() {
    let d = Reply::default()
        .sock(6, 1, "198.18.7.1:80", "198.18.7.10:1", None)
        .done(6, 0)
        .sock(7, 1, "198.18.7.1:80", "198.18.7.10:2", None);
    let (r, v) = collect(&d.0, Some(7));
    assert_eq!(r.unwrap(), Progress::More);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].remote.port(), 2);
}

#[test]
fn nlmsg_error_and_failed_done_become_kernel_errors() {
    let d = Reply::default().error(9, -libc::EINVAL);
    match collect(&d.0, Some(9)).0 {
        Err(SockDiagError::Kernel { seq: 9, source }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
        }
        other => panic!("{other:?}"),
    }
    let d = Reply::default()
        .sock(9, 1, "198.18.7.1:80", "198.18.7.10:1", None)
        .done(9, -libc::ENOBUFS);
    assert!(matches!(
        collect(&d.0, Some(9)).0,
        Err(SockDiagError::Kernel { seq: 9, .. })
    ));
    // An ACK (error 0) is not an error.
    let d = Reply::default().error(9, 0).done(9, 0);
    assert_eq!(collect(&d.0, Some(9)).0.unwrap(), Progress::Done);
}

#[test]
fn truncated_and_garbage_messages_are_malformed() {
    let d = Reply::default().sock(1, 1, "198.18.7.1:80", "198.18.7.10:1", None);
    let cut = &d.0[..d.0.len() - 8];
    assert!(matches!(
        collect(cut, Some(1)).0,
        Err(SockDiagError::Malformed { offset: 0, .. })
    ));
    let mut bad_attr = d.0.clone();
    // Corrupt the first attribute's length so it runs past the message.
    let at = NLMSG_HDRLEN + DIAG_MSG_LEN;
    bad_attr[at..at + 2].copy_from_slice(&400u16.to_ne_bytes());
    assert!(matches!(
        collect(&bad_attr, Some(1)).0,
        Err(SockDiagError::Malformed { .. })
    ));
    let mut short = Reply::default();
    short.header(NLMSG_HDRLEN + 8, SOCK_DIAG_BY_FAMILY, 2, 1);
    short.0.extend_from_slice(&[0; 8]);
    assert!(matches!(
        collect(&short.0, Some(1)).0,
        Err(SockDiagError::Malformed { .. })
    ));
}

#[test]
fn v4_mapped_ipv6_sockets_read_as_ipv4_and_real_ipv6_ones_are_skipped() {
    let mut body = vec![AF_INET6, 1, 0, 0];
    body.extend_from_slice(&80u16.to_be_bytes());
    body.extend_from_slice(&40000u16.to_be_bytes());
    let mapped = |o: [u8; 4]| {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&o);
        a
    };
    body.extend_from_slice(&mapped([198, 18, 7, 1]));
    body.extend_from_slice(&mapped([198, 18, 7, 10]));
    body.extend_from_slice(&[0; 32]);
    let s = parse_diag_msg(&body).unwrap().unwrap();
    assert_eq!(s.local, "198.18.7.1:80".parse().unwrap());
    assert_eq!(s.remote, "198.18.7.10:40000".parse().unwrap());
    // 2001:db8::1 is not an IPv4 connection.
    body[4 + 4] = 0x20;
    body[4 + 5] = 0x01;
    assert_eq!(parse_diag_msg(&body).unwrap(), None);
}

#[test]
fn request_layout() {
    let kf = KernelFilter {
        sport: 80,
        bytecode: Some(vec![1, 4, 8, 0]),
    };
    let m = dump_request(77, AF_INET, 0x0a, EXT_INFO, Some(&kf));
    assert_eq!(m.len(), NLMSG_HDRLEN + REQ_V2_LEN + 8);
    assert_eq!(u32_at(&m, 0) as usize, m.len());
    assert_eq!(u16_at(&m, 4), SOCK_DIAG_BY_FAMILY);
    assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_DUMP);
    assert_eq!(u32_at(&m, 8), 77);
    let r = &m[NLMSG_HDRLEN..];
    assert_eq!(&r[..4], &[AF_INET, 6, EXT_INFO, 0]);
    assert_eq!(u32_at(r, 4), 0x0a);
    assert_eq!(&r[8..10], &80u16.to_be_bytes());
    let a = &r[REQ_V2_LEN..];
    assert_eq!((u16_at(a, 0), u16_at(a, 2)), (8, INET_DIAG_REQ_BYTECODE));
    assert_eq!(&a[4..], &[1, 4, 8, 0]);
}

// --- bytecode: a user-space model of the kernel's verifier and interpreter ---------------

/// `inet_diag_bc_audit` + `valid_cc`, restricted to the ops this module emits.
fn audit(bc: &[u8]) -> Result<(), String> {
    let valid_cc = |cc: usize| {
        let mut len = bc.len() as isize;
        let mut at = 0usize;
        while len >= 0 {
            if cc as isize > len {
                return false;
            }
            if cc as isize == len {
                return true;
            }
            let yes = bc[at + 1] as isize;
            if yes < 4 || yes & 3 != 0 {
                return false;
            }
            len -= yes;
            at += yes as usize;
        }
        false
    };
    let mut at = 0usize;
    let mut len = bc.len();
    while len > 0 {
        let code = bc[at];
        let min_len = match code {
            BC_S_COND => {
                if bc[at + 4] != AF_INET || bc[at + 5] > 32 {
                    return Err(format!("bad hostcond at {at}"));
                }
                OP_LEN + HOSTCOND_V4_LEN
            }
            BC_S_EQ => 2 * OP_LEN,
            BC_JMP => OP_LEN,
            c => return Err(format!("unexpected op {c} at {at}")),
        };
        if len < min_len {
            return Err(format!("op at {at} runs past the end"));
        }
        let yes = usize::from(bc[at + 1]);
        let no = usize::from(u16_at(bc, at + 2));
        if no < min_len || no > len + 4 || no & 3 != 0 {
            return Err(format!("bad no={no} at {at} (len {len})"));
        }
        if no < len && !valid_cc(len - no) {
            return Err(format!("no={no} at {at} is not on the yes chain"));
        }
        if yes < min_len || yes > len + 4 || yes & 3 != 0 {
            return Err(format!("bad yes={yes} at {at}"));
        }
        at += yes;
        len -= yes;
    }
    Ok(())
}

/// `inet_diag_bc_run` for an IPv4 socket.
fn run(bc: &[u8], local: SocketAddrV4) -> bool {
    let mut at = 0isize;
    let mut len = bc.len() as isize;
    while len > 0 {
        let i = at as usize;
        let yes = match bc[i] {
            BC_JMP => false,
            BC_S_EQ => local.port() == u16_at(bc, i + 6),
            BC_S_COND => {
                let port = i32::from_ne_bytes(bc[i + 8..i + 12].try_into().unwrap());
                let addr = Ipv4Addr::new(bc[i + 12], bc[i + 13], bc[i + 14], bc[i + 15]);
                (port == -1 || port == i32::from(local.port())) && addr == *local.ip()
            }
            c => panic!("unexpected op {c}"),
        };
        let step = if yes {
            isize::from(bc[i + 1])
        } else {
            u16_at(bc, i + 2) as isize
        };
        at += step;
        len -= step;
    }
    len == 0
}

#[test]
fn compiled_filters_pass_the_verifier_and_agree_with_matches() {
    let a = |n: u8| Ipv4Addr::new(198, 18, 7, n);
    let filters = [
        SocketFilter::new(vec![a(1)], vec![80]),
        SocketFilter::new(vec![a(1), a(2), a(3)], vec![80, 81, 443, 8443]),
        SocketFilter::new(vec![], vec![80, 81]),
        SocketFilter::new(vec![a(1), a(2)], vec![]),
        SocketFilter::new(vec![a(1), a(1)], vec![81, 80, 81]),
        SocketFilter::default(),
    ];
    let probes: Vec<SocketAddrV4> = [1, 2, 3, 4]
        .iter()
        .flat_map(|&n| [22u16, 80, 81, 443, 8443, 40000].map(move |p| SocketAddrV4::new(a(n), p)))
        .collect();
    for f in &filters {
        let kf = KernelFilter::compile(f).expect("small filters compile");
        if let Some(bc) = &kf.bytecode {
            audit(bc).unwrap_or_else(|e| panic!("{f:?}: {e}\n{bc:?}"));
        }
        for &p in &probes {
            let by_sport = kf.sport == 0 || kf.sport == p.port();
            let by_bc = kf.bytecode.as_deref().is_none_or(|bc| run(bc, p));
            assert_eq!(by_sport && by_bc, f.matches(p), "{f:?} on {p}");
        }
    }
}

#[test]
fn single_port_uses_the_sockid_port_and_no_port_bytecode() {
    let f = SocketFilter::new(vec![Ipv4Addr::new(198, 18, 7, 1)], vec![80]);
    let kf = KernelFilter::compile(&f).unwrap();
    assert_eq!(kf.sport, 80);
    assert_eq!(kf.bytecode.unwrap().len(), OP_LEN + HOSTCOND_V4_LEN);
}

#[test]
fn oversized_filters_fall_back_to_user_space() {
    let f = SocketFilter::new(vec![], (1..=6000).collect::<Vec<u16>>());
    assert_eq!(KernelFilter::compile(&f), None);
    let f = SocketFilter::new(vec![], (1..=5000).collect::<Vec<u16>>());
    let kf = KernelFilter::compile(&f).unwrap();
    audit(kf.bytecode.as_ref().unwrap()).unwrap();
    // Each list fits on its own, the two together do not.
    let addrs: Vec<Ipv4Addr> = (0..2000u32)
        .map(|n| Ipv4Addr::from(0xc612_0000 + n))
        .collect();
    let f = SocketFilter::new(addrs, (1..=3000).collect::<Vec<u16>>());
    assert_eq!(KernelFilter::compile(&f), None);
}

/// Property tests of the reply parser (`make fuzz` runs a million cases of each): the bytes
/// come from the kernel, and a parser that panics on some layout would take the daemon with it.
mod prop {
    use super::*;
    use proptest::prelude::*;

    /// One socket of a dump: state, local and remote endpoint, tcp_info's two idle fields.
    type Sock = (u8, [u8; 4], u16, [u8; 4], u16, Option<(u32, u32)>);

    fn sock() -> impl Strategy<Value = Sock> {
        (
            any::<u8>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            proptest::option::of((any::<u32>(), any::<u32>())),
        )
    }

    fn dump(socks: &[Sock], seq: u32) -> Vec<u8> {
        let mut r = Reply::default();
        for &(state, l, lp, rem, rp, info) in socks {
            let local = format!("{}:{lp}", Ipv4Addr::from(l));
            let remote = format!("{}:{rp}", Ipv4Addr::from(rem));
            r = r.sock(seq, state, &local, &remote, info);
        }
        r.done(seq, 0).0
    }

    /// An error is one line naming where the datagram went wrong.
    fn clean(r: &Result<Progress, SockDiagError>) -> Result<(), TestCaseError> {
        if let Err(e) = r {
            let text = e.to_string();
            prop_assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn prop_any_bytes_parse_or_fail_with_one_line(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            seq in proptest::option::of(any::<u32>()),
        ) {
            let r = parse_datagram(&bytes, seq, &mut |_| {});
            clean(&r)?;
        }

        #[test]
        fn prop_a_well_formed_dump_reads_back_every_socket(
            socks in proptest::collection::vec(sock(), 0..24),
            seq in any::<u32>(),
        ) {
            let (r, got) = collect(&dump(&socks, seq), Some(seq));
            prop_assert_eq!(r.unwrap(), Progress::Done);
            prop_assert_eq!(got.len(), socks.len());
            for (s, &(state, l, lp, rem, rp, info)) in got.iter().zip(&socks) {
                prop_assert_eq!(s.state, TcpState::from_kernel(state));
                prop_assert_eq!(s.local, SocketAddrV4::new(l.into(), lp));
                prop_assert_eq!(s.remote, SocketAddrV4::new(rem.into(), rp));
                prop_assert_eq!(s.idle_ms, info.map(|(data, ack)| data.min(ack)));
            }
        }

        #[test]
        fn prop_a_damaged_dump_never_panics(
            socks in proptest::collection::vec(sock(), 1..8),
            cut in any::<proptest::sample::Index>(),
            flips in proptest::collection::vec(
                (any::<proptest::sample::Index>(), any::<u8>()), 0..8),
        ) {
            let mut d = dump(&socks, 7);
            for (at, b) in &flips {
                let i = at.index(d.len());
                d[i] = *b;
            }
            d.truncate(cut.index(d.len() + 1));
            let mut seen = 0usize;
            let r = parse_datagram(&d, Some(7), &mut |_| seen += 1);
            clean(&r)?;
            // Every socket reported was read from bytes that are there.
            prop_assert!(seen * (NLMSG_HDRLEN + DIAG_MSG_LEN) <= d.len());
        }
    }
}
