use super::*;
use rtnetlink::packet_route::link::LinkAttribute;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 100);

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn local_route_message_is_what_ip_route_add_local_sends() {
    let msg = local_route_message(VIP, 1);
    assert_eq!(msg.header.address_family, AddressFamily::Inet);
    assert_eq!(msg.header.destination_prefix_length, 32);
    assert_eq!(msg.header.kind, RouteType::Local);
    assert_eq!(msg.header.scope, RouteScope::Host);
    assert_eq!(u8::from(msg.header.protocol), ROUTE_PROTO);
    assert!(msg
        .attributes
        .contains(&RouteAttribute::Destination(RouteAddress::Inet(VIP))));
    assert!(msg.attributes.contains(&RouteAttribute::Oif(1)));
    let summary = route_summary(&msg).unwrap();
    assert!(summary.is_ours());
    assert!(summary.same_key_as_ours(VIP));
    // The delete request must name our protocol, or the kernel would delete any route.
    let del = del_route_message(VIP);
    assert_eq!(u8::from(del.header.protocol), ROUTE_PROTO);
    assert_eq!(del.header.kind, RouteType::Local);
}

#[test]
fn route_summary_tells_ours_from_foreign_and_reads_big_table_ids() {
    let mut msg = local_route_message(VIP, 1);
    msg.header.protocol = RouteProtocol::KeepAlived;
    let s = route_summary(&msg).unwrap();
    assert!(!s.is_ours());
    assert!(
        s.same_key_as_ours(VIP),
        "a foreign route still blocks our add"
    );
    let mut other_table = local_route_message(VIP, 1);
    other_table.attributes.push(RouteAttribute::Table(1000));
    let s = route_summary(&other_table).unwrap();
    assert_eq!(s.table, 1000);
    assert!(!s.is_ours() && !s.same_key_as_ours(VIP));
    let mut with_metric = local_route_message(VIP, 1);
    with_metric.attributes.push(RouteAttribute::Priority(10));
    assert!(!route_summary(&with_metric).unwrap().same_key_as_ours(VIP));
}

#[test]
fn link_info_reads_up_and_running_flags() {
    let mut msg = LinkMessage::default();
    msg.header.index = 7;
    msg.header.flags = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::IfName("veth0".into()));
    assert_eq!(
        link_info(&msg),
        LinkInfo {
            index: 7,
            up: true,
            oper_up: false
        }
    );
    msg.header.flags |= LinkFlags::Running;
    assert!(link_info(&msg).oper_up);
    assert_eq!(link_name(&msg), Some("veth0"));
}

#[test]
fn local_ipv4_prefers_ifa_local_over_peer_address() {
    let mut msg = AddressMessage::default();
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(
            10, 0, 0, 2,
        ))));
    assert_eq!(local_ipv4(&msg), Some(Ipv4Addr::new(10, 0, 0, 2)));
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(
            10, 0, 0, 1,
        ))));
    assert_eq!(local_ipv4(&msg), Some(Ipv4Addr::new(10, 0, 0, 1)));
}

#[test]
fn fake_follows_kernel_semantics_and_records_calls() {
    let fake = FakeLinks::new()
        .with_link("lo", true, true)
        .with_link("track0", true, true)
        .with_address("track0", VIP, 32)
        .with_foreign_route(Ipv4Addr::new(198, 18, 5, 101), 4);
    block_on(async {
        assert!(fake.link_state("track0").await.unwrap().oper_up);
        fake.set_link_up("track0", false).await.unwrap();
        let s = fake.link_state("track0").await.unwrap();
        assert!(!s.up && !s.oper_up);
        assert!(matches!(
            fake.link_state("eth9").await,
            Err(LinksError::NoSuchInterface { ifname }) if ifname == "eth9"
        ));
        let owner = fake.has_address(None, VIP).await.unwrap().unwrap();
        assert_eq!((owner.ifname.as_str(), owner.index), ("track0", 2));
        assert_eq!(fake.has_address(Some("lo"), VIP).await.unwrap(), None);
        fake.add_local_route(VIP).await.unwrap();
        fake.add_local_route(VIP).await.unwrap();
        assert!(fake.local_route_exists(VIP).await.unwrap());
        assert!(matches!(
            fake.add_local_route(Ipv4Addr::new(198, 18, 5, 101)).await,
            Err(LinksError::ForeignRoute { protocol: 4, .. })
        ));
        fake.del_local_route(VIP).await.unwrap();
        fake.del_local_route(VIP).await.unwrap();
        assert!(fake.our_local_routes().await.unwrap().is_empty());
    });
    assert_eq!(
        fake.calls()[..3],
        [
            LinkCall::LinkState("track0".into()),
            LinkCall::SetLinkUp("track0".into(), false),
            LinkCall::LinkState("track0".into()),
        ]
    );
    assert_eq!(fake.calls().len(), 13);
}

#[test]
fn fake_fails_the_scripted_call_once() {
    let fake = FakeLinks::new().with_link("track0", true, true);
    fake.fail_on(
        LinkCall::SetLinkUp("track0".into(), false),
        LinksError::NoSuchInterface {
            ifname: "track0".into(),
        },
    );
    block_on(async {
        assert!(fake.set_link_up("track0", true).await.is_ok());
        assert!(fake.set_link_up("track0", false).await.is_err());
        assert!(
            fake.link("track0").unwrap().up,
            "a failed call changes nothing"
        );
        assert!(fake.set_link_up("track0", false).await.is_ok());
    });
    assert!(!fake.link("track0").unwrap().up);
    fake.set_carrier("track0", false);
    assert!(!fake.link("track0").unwrap().carrier);
}
