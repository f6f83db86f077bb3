//! Differential test: random and mutated frames through the XDP program
//! (BPF_PROG_TEST_RUN), each frame's class compared with etherparse's reading of it.
//! Needs root. Replay a failure with `DIFF_SEED=<seed printed> cargo xtask test --test differential`.

use std::{collections::BTreeMap, time::Instant};

use dns_xdp_common::{Class, L4, PortSet};
use dns_xdp_testkit::{
    packet::{DSTOPTS, ETH_P_8021AD, ETH_P_8021Q, HOPOPTS, Layer, ROUTING, build, dns_query},
    reference,
    testrun::{Harness, XDP_DROP, XDP_PASS},
};

const FRAMES: usize = 100_000;
/// BPF_PROG_TEST_RUN takes XDP frames from an Ethernet header up to about a page.
const MIN_FRAME: usize = 14;
const MAX_FRAME: usize = 3000;
const PORTS: [u16; 2] = [53, 853];

/// splitmix64: small, seedable, good enough to drive a generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn port(rng: &mut Rng) -> u16 {
    match rng.below(4) {
        0 => 53,
        1 => 853,
        2 => 40000,
        _ => rng.next() as u16,
    }
}

/// A plausible frame: random link, network and transport layers.
fn structured(rng: &mut Rng) -> Vec<u8> {
    let mut layers = vec![Layer::Eth];
    for _ in 0..rng.pick(&[0, 0, 0, 1, 1, 2, 3]) {
        layers.push(Layer::Vlan(rng.pick(&[ETH_P_8021Q, ETH_P_8021AD, 0x9100])));
    }
    match rng.below(10) {
        0..=4 => {
            layers.push(Layer::Ipv4 {
                options: vec![1; rng.pick(&[0, 0, 0, 1, 4, 10]) * 4],
                frag_offset: if rng.chance(15) {
                    rng.below(400) as u16
                } else {
                    0
                },
                more_fragments: rng.chance(15),
            });
            if rng.chance(5) {
                layers.push(Layer::Auth {
                    icv_words: rng.below(4) as u8,
                });
            }
        }
        5..=8 => {
            layers.push(Layer::Ipv6);
            for _ in 0..rng.pick(&[0, 0, 0, 1, 2, 3, 7, 8, 9]) {
                layers.push(match rng.below(6) {
                    0 => Layer::Ipv6Ext {
                        protocol: HOPOPTS,
                        len_units: rng.below(3) as u8,
                    },
                    1 => Layer::Ipv6Ext {
                        protocol: ROUTING,
                        len_units: rng.below(3) as u8,
                    },
                    2 | 3 => Layer::Ipv6Ext {
                        protocol: DSTOPTS,
                        len_units: rng.below(3) as u8,
                    },
                    4 => Layer::Ipv6Frag {
                        offset: if rng.chance(50) {
                            0
                        } else {
                            rng.below(400) as u16
                        },
                        more_fragments: rng.chance(50),
                    },
                    _ => Layer::Auth {
                        icv_words: rng.below(4) as u8,
                    },
                });
            }
        }
        _ => {}
    }
    match rng.below(10) {
        0..=4 => layers.push(Layer::Udp {
            src: port(rng),
            dst: port(rng),
        }),
        5..=7 => layers.push(Layer::Tcp {
            src: port(rng),
            dst: port(rng),
        }),
        8 => layers.push(Layer::OtherL4(rng.pick(&[1, 2, 58, 132]))),
        _ => {}
    }
    if rng.chance(70) {
        layers.push(Layer::Payload(dns_query(rng.next() as u16, "example.com")));
    } else {
        let len = rng.below(64);
        layers.push(Layer::Payload(rng.bytes(len)));
    }
    build(&layers)
}

/// Breaks a frame the way the wire and attackers do.
fn mutate(rng: &mut Rng, mut frame: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.pick(&[0, 1, 1, 2, 3]) {
        match rng.below(5) {
            // Flip bytes, mostly in the headers.
            0 | 1 => {
                let span = frame
                    .len()
                    .min(if rng.chance(80) { 96 } else { frame.len() });
                let at = rng.below(span);
                frame[at] ^= 1 << rng.below(8);
            }
            2 => {
                let at = rng.below(frame.len());
                frame[at] = rng.next() as u8;
            }
            // Cut short.
            3 => {
                let len = MIN_FRAME + rng.below(frame.len().saturating_sub(MIN_FRAME) + 1);
                frame.truncate(len);
            }
            // Trailing bytes (Ethernet padding, or garbage).
            _ => {
                let len = rng.below(40);
                frame.extend(rng.bytes(len));
            }
        }
    }
    frame.resize(frame.len().clamp(MIN_FRAME, MAX_FRAME), 0);
    frame
}

fn frame(rng: &mut Rng) -> Vec<u8> {
    match rng.below(20) {
        // Pure noise behind a real EtherType now and then.
        0 => {
            let len = MIN_FRAME + rng.below(200);
            let mut noise = rng.bytes(len);
            let ether_type: u16 = rng.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806]);
            noise[12..14].copy_from_slice(&ether_type.to_be_bytes());
            noise
        }
        1..=5 => structured(rng),
        _ => {
            let frame = structured(rng);
            mutate(rng, frame)
        }
    }
}

#[test]
fn xdp_parser_agrees_with_etherparse_on_100k_frames() {
    let seed = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("differential seed: {seed} (replay with DIFF_SEED={seed})");
    let mut rng = Rng(seed);
    // Classification, and the verdict it implies with nothing configured and the DNS
    // sanity check off: answers (this host sent no query) and malformed frames are
    // dropped, everything else passes.
    let settings = dns_xdp::Settings {
        ports: PORTS.to_vec(),
        dns_sanity: false,
        ..dns_xdp::Settings::default()
    };
    let mut harness = Harness::with(&settings).expect("loading the programs (are we root?)");
    let mut ports = PortSet::EMPTY;
    PORTS.iter().for_each(|&port| ports.insert(port));

    let started = Instant::now();
    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for index in 0..FRAMES {
        let frame = frame(&mut rng);
        let outcome = harness.run(&frame).expect("test run");
        let expected = reference::classify(&frame, &ports);
        // (A TCP segment to a DNS port other than a SYN belongs to no connection here and
        // is dropped: the reference classifies, it does not read TCP flags, so TCP
        // queries may go either way.)
        let verdict = match expected {
            Class::Answer { .. } | Class::Malformed => Some(XDP_DROP),
            Class::Query { l4: L4::Tcp, .. } => None,
            _ => Some(XDP_PASS),
        };
        let bumped: Vec<_> = outcome
            .bumped()
            .into_iter()
            .filter(|counter| counter.is_class())
            .collect();
        *classes.entry(format!("{expected:?}")).or_default() += 1;
        if bumped != [expected.counter()] || verdict.is_some_and(|v| v != outcome.verdict) {
            mismatches.push(format!(
                "frame {index}: xdp {bumped:?} (verdict {}), etherparse {expected:?}: {}",
                outcome.verdict,
                frame
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect::<String>()
            ));
        }
    }
    println!(
        "{FRAMES} frames in {:.1}s, by class: {classes:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        mismatches.is_empty(),
        "seed {seed}: {} mismatches, first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
    // The generator must reach every class often, or the comparison proves little.
    for class in ["Malformed", "NonDns", "Fragment"] {
        assert!(
            classes.get(class).copied().unwrap_or(0) > 1000,
            "{class} rare: {classes:?}"
        );
    }
    let queries: usize = classes
        .iter()
        .filter(|(k, _)| k.starts_with("Query"))
        .map(|(_, v)| v)
        .sum();
    let answers: usize = classes
        .iter()
        .filter(|(k, _)| k.starts_with("Answer"))
        .map(|(_, v)| v)
        .sum();
    assert!(queries > 5000 && answers > 2000, "{classes:?}");
}
