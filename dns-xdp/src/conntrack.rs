//! The conntrack bypass: nftables rules that keep DNS flows on the attached interface out
//! of the connection-tracking table, the checks that the host's filter rules still let
//! untracked DNS through, and conntrack headroom.
//!
//! The rules live in a table of their own per interface (`inet dns_xdp_<iface>`), built
//! with the nftables crate (nft's JSON API) and replaced in one transaction.

use std::{borrow::Cow, fs};

use anyhow::Context as _;
use nftables::{
    batch::Batch,
    expr::{
        Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
        SetItem, Socket, SocketAttr,
    },
    helper::{apply_ruleset, apply_ruleset_raw, get_current_ruleset, get_current_ruleset_raw},
    schema::{Chain, NfListObject, Rule, Table},
    stmt::{Counter, Match, Operator, Statement},
    types::{NfChainType, NfFamily, NfHook},
};
use serde_json::Value;

/// Netfilter's raw priority: before conntrack (-200) sees the packet.
const PRIORITY_RAW: i32 = -300;

/// The name of the bypass table of `iface` (nft identifiers: letters, digits, `_`),
/// distinct for distinct interface names.
pub fn table_name(iface: &str) -> String {
    format!("dns_xdp_{}", crate::pins::escaped(iface))
}

/// One bypass rule: which hook, which interface match, which port field.
struct BypassRule {
    chain: &'static str,
    iface_key: MetaKey,
    port_field: &'static str,
    /// Only packets addressed to this host (`fib daddr type local`): queries forwarded
    /// through it (containers, VMs, a router's clients) keep conntrack and their NAT.
    local_only: bool,
    /// Only packets a local socket waits for (`socket transparent 0`: a socket exists
    /// and is not transparent): answers to this host's own queries, and not those to
    /// queries it forwarded and masqueraded, which need conntrack to find their way
    /// back (they arrive at this host's address too, at a port no socket holds).
    to_local_socket: bool,
    /// What it exempts, for `status`.
    purpose: &'static str,
}

/// Serving (queries in, answers out) and backending (queries out to upstream servers,
/// answers in), UDP and TCP alike.
const RULES: [BypassRule; 4] = [
    BypassRule {
        chain: "prerouting",
        iface_key: MetaKey::Iifname,
        port_field: "dport",
        local_only: true,
        to_local_socket: false,
        purpose: "queries to this host (serving)",
    },
    BypassRule {
        chain: "prerouting",
        iface_key: MetaKey::Iifname,
        port_field: "sport",
        local_only: false,
        to_local_socket: true,
        purpose: "answers from upstream servers (backending)",
    },
    BypassRule {
        chain: "output",
        iface_key: MetaKey::Oifname,
        port_field: "sport",
        local_only: false,
        to_local_socket: false,
        purpose: "answers from this host (serving)",
    },
    BypassRule {
        chain: "output",
        iface_key: MetaKey::Oifname,
        port_field: "dport",
        local_only: false,
        to_local_socket: false,
        purpose: "queries to upstream servers (backending)",
    },
];

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn set(items: impl IntoIterator<Item = Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

/// The name earlier versions gave the bypass table of `iface` (every byte other than a
/// letter or digit as `_`), removed along with the table when it differs.
fn legacy_table_name(iface: &str) -> String {
    let sanitized: String = iface
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("dns_xdp_{sanitized}")
}

fn table_object(name: String) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Owned(name),
        handle: None,
    })
}

/// A transaction that removes the bypass table of `iface` (under this version's name and
/// an earlier one's), whether or not it exists: each is created, then deleted.
fn removal_batch(iface: &str) -> Batch<'static> {
    let mut batch = Batch::new();
    let mut names = vec![table_name(iface)];
    if legacy_table_name(iface) != names[0] {
        names.push(legacy_table_name(iface));
    }
    for name in names {
        batch.add(table_object(name.clone()));
        batch.delete(table_object(name));
    }
    batch
}

/// The transaction that (re)creates the bypass table of `iface` for `ports`: it removes
/// whatever was there first, so re-running it replaces it.
fn bypass_batch(iface: &str, ports: &[u16]) -> Batch<'static> {
    let table = table_name(iface);
    let mut batch = removal_batch(iface);
    batch.add(table_object(table.clone()));
    for (name, hook) in [
        ("prerouting", NfHook::Prerouting),
        ("output", NfHook::Output),
    ] {
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: Cow::Owned(table.clone()),
            name: Cow::Borrowed(name),
            _type: Some(NfChainType::Filter),
            hook: Some(hook),
            prio: Some(PRIORITY_RAW),
            ..Chain::default()
        }));
    }
    let ports = || {
        set(ports
            .iter()
            .map(|&port| Expression::Number(u32::from(port))))
    };
    for rule in &RULES {
        let expr = vec![
            matches(
                Expression::Named(NamedExpression::Meta(Meta {
                    key: rule.iface_key,
                })),
                Expression::String(Cow::Owned(iface.to_owned())),
            ),
            matches(
                Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::L4proto,
                })),
                set([
                    Expression::String("udp".into()),
                    Expression::String("tcp".into()),
                ]),
            ),
            matches(
                Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                    PayloadField {
                        protocol: "th".into(),
                        field: rule.port_field.into(),
                    },
                ))),
                ports(),
            ),
            Statement::Counter(Counter::Anonymous(None)),
            Statement::Notrack,
        ];
        let mut expr = expr;
        if rule.to_local_socket {
            expr.insert(
                0,
                matches(
                    Expression::Named(NamedExpression::Socket(Socket {
                        key: Cow::Owned(SocketAttr::Transparent),
                    })),
                    Expression::Number(0),
                ),
            );
        }
        if rule.local_only {
            expr.insert(
                0,
                matches(
                    Expression::Named(NamedExpression::Fib(Fib {
                        result: FibResult::Type,
                        flags: [FibFlag::Daddr].into_iter().collect(),
                    })),
                    Expression::String("local".into()),
                ),
            );
        }
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: Cow::Owned(table.clone()),
            chain: Cow::Borrowed(rule.chain),
            expr: expr.into(),
            comment: Some(rule.purpose.into()),
            ..Rule::default()
        }));
    }
    batch
}

/// nft's JSON for a batch. nftables 0.6 writes the `notrack` statement as a bare
/// string, which nft rejects; nft wants `{"notrack": null}`.
fn batch_json(batch: Batch<'static>) -> anyhow::Result<Value> {
    let mut json = serde_json::to_value(batch.to_nftables())?;
    let statements = json
        .get_mut("nftables")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|command| command.pointer_mut("/add/rule/expr")?.as_array_mut())
        .flatten();
    for statement in statements {
        if statement == "notrack" {
            *statement = serde_json::json!({ "notrack": null });
        }
    }
    Ok(json)
}

/// Installs (or replaces) the bypass rules of `iface`.
pub fn install(iface: &str, ports: &[u16]) -> anyhow::Result<()> {
    let json = batch_json(bypass_batch(iface, ports))?;
    apply_ruleset_raw(&json.to_string(), None::<&str>, [] as [&str; 0]).with_context(|| {
        format!("installing the conntrack bypass for {iface} with nft (is nftables installed?)")
    })?;
    Ok(())
}

/// Whether `nft` is on PATH: without it no bypass table can exist, and
/// `--conntrack-bypass=false` must work all the same.
fn nft_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("nft").is_file()))
}

/// Removes the bypass table of `iface`; succeeds when there was none (or no nft to have
/// made one).
pub fn remove(iface: &str) -> anyhow::Result<()> {
    if !nft_installed() {
        return Ok(());
    }
    apply_ruleset(&removal_batch(iface).to_nftables())
        .with_context(|| format!("removing the conntrack bypass of {iface} with nft"))
}

/// A bypass rule as installed, with the packets it has exempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledRule {
    pub chain: String,
    pub purpose: String,
    pub packets: u64,
}

/// The bypass rules installed for `iface`, or `None` when its table does not exist.
pub fn installed(iface: &str) -> anyhow::Result<Option<Vec<InstalledRule>>> {
    let table = table_name(iface);
    let Ok(listing) =
        get_current_ruleset_raw(None::<&str>, ["list", "table", "inet", table.as_str()])
    else {
        return Ok(None);
    };
    let listing: Value = serde_json::from_str(&listing).context("parsing nft's listing")?;
    let mut rules = Vec::new();
    for object in listing["nftables"].as_array().into_iter().flatten() {
        let Some(rule) = object.get("rule") else {
            continue;
        };
        let packets = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|statement| statement["counter"]["packets"].as_u64())
            .unwrap_or(0);
        rules.push(InstalledRule {
            chain: rule["chain"].as_str().unwrap_or_default().to_owned(),
            purpose: rule["comment"].as_str().unwrap_or_default().to_owned(),
            packets,
        });
    }
    Ok(Some(rules))
}

/// `nf_conntrack_count` and `nf_conntrack_max` of this network namespace, when conntrack
/// is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    pub count: u64,
    pub max: u64,
}

pub fn headroom() -> Option<Headroom> {
    let read = |name: &str| -> Option<u64> {
        fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(Headroom {
        count: read("nf_conntrack_count")?,
        max: read("nf_conntrack_max")?,
    })
}

/// A stateless accept rule untracked DNS needs where a filter chain drops by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needed {
    pub hook: &'static str,
    /// The port field that must be a DNS port: `sport` or `dport`.
    pub field: &'static str,
    pub lets_through: &'static str,
}

/// Serving and backending, in both filter hooks.
const NEEDED: [Needed; 4] = [
    Needed {
        hook: "input",
        field: "dport",
        lets_through: "queries to this host",
    },
    Needed {
        hook: "input",
        field: "sport",
        lets_through: "answers from upstream servers",
    },
    Needed {
        hook: "output",
        field: "sport",
        lets_through: "answers from this host",
    },
    Needed {
        hook: "output",
        field: "dport",
        lets_through: "queries to upstream servers",
    },
];

/// A filter chain that would drop untracked DNS, and the accept rules it lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hazard {
    /// `family table chain`, as nft names it (`ip`/`ip6` for iptables-legacy).
    pub chain: String,
    pub missing: Vec<Needed>,
    /// An iptables-legacy chain (nft does not show it): its fix is an iptables-legacy rule.
    pub legacy: bool,
}

/// Looks at the host's nftables ruleset (iptables-nft rules included) and its
/// iptables-legacy filter tables for input/output filter chains with a drop policy and
/// no stateless accept for the DNS ports: untracked packets match no `ct state` rule,
/// so such a chain drops them once the bypass is on.
pub fn hazards(ports: &[u16]) -> anyhow::Result<Vec<Hazard>> {
    let ruleset = get_current_ruleset().context("reading the nftables ruleset")?;
    let ruleset = serde_json::to_value(&ruleset)?;
    let mut hazards = find_hazards(&ruleset, ports);
    for (family, tool) in LEGACY_SAVE {
        // Without the tool, or without the legacy tables loaded, there is nothing to check.
        let Ok(output) = std::process::Command::new(tool)
            .args(["-t", "filter"])
            .output()
        else {
            continue;
        };
        if output.status.success() {
            let save = String::from_utf8_lossy(&output.stdout);
            hazards.extend(find_legacy_hazards(&save, family, ports));
        }
    }
    Ok(hazards)
}

/// The iptables-legacy families and the tools that print their rules.
const LEGACY_SAVE: [(&str, &str); 2] = [
    ("ip", "iptables-legacy-save"),
    ("ip6", "ip6tables-legacy-save"),
];

/// The pure part of the iptables-legacy check, on `iptables-legacy-save -t filter`
/// output: the same rules as `find_hazards` (a DROP policy, or an unconditional DROP or
/// REJECT rule, with no stateless accept of the DNS ports before it, in the chain or a
/// chain it jumps to), for the built-in INPUT and OUTPUT chains.
pub fn find_legacy_hazards(save: &str, family: &str, ports: &[u16]) -> Vec<Hazard> {
    let mut policies = Vec::new();
    let mut rules: Vec<(String, Vec<String>)> = Vec::new();
    for line in save.lines().map(str::trim) {
        if let Some(chain) = line.strip_prefix(':') {
            let mut fields = chain.split_whitespace();
            if let (Some(name), Some(policy)) = (fields.next(), fields.next()) {
                policies.push((name.to_owned(), policy.to_owned()));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut words = shell_words(rule);
            if !words.is_empty() {
                let chain = words.remove(0);
                rules.push((chain, words));
            }
        }
    }
    let mut hazards = Vec::new();
    for (chain, hook) in [("INPUT", "input"), ("OUTPUT", "output")] {
        let drop_policy = policies
            .iter()
            .any(|(name, policy)| name == chain && policy == "DROP");
        let (before, final_drop) = legacy_rules_until_final_drop(&rules, chain);
        if !drop_policy && !final_drop {
            continue;
        }
        let missing: Vec<Needed> = NEEDED
            .into_iter()
            .filter(|needed| {
                needed.hook == hook
                    && !legacy_reaches_accept(&rules, &before, needed.field, ports, 0)
            })
            .collect();
        if !missing.is_empty() {
            hazards.push(Hazard {
                chain: format!("{family} filter {chain}"),
                missing,
                legacy: true,
            });
        }
    }
    hazards
}

/// The rule arguments of `chain` before its first unconditional DROP or REJECT, and
/// whether there is one.
fn legacy_rules_until_final_drop<'a>(
    rules: &'a [(String, Vec<String>)],
    chain: &str,
) -> (Vec<&'a [String]>, bool) {
    let mut before = Vec::new();
    for (name, words) in rules {
        if name != chain {
            continue;
        }
        let unconditional = matches!(
            words.iter().map(String::as_str).collect::<Vec<_>>()[..],
            ["-j", "DROP"] | ["-j", "REJECT"] | ["-j", "REJECT", "--reject-with", _]
        );
        if unconditional {
            return (before, true);
        }
        before.push(words.as_slice());
    }
    (before, false)
}

/// Whether `rules`, or the user chains they jump or go to, accept `field` (sport/dport)
/// in `ports` with no conntrack condition.
fn legacy_reaches_accept(
    all: &[(String, Vec<String>)],
    rules: &[&[String]],
    field: &str,
    ports: &[u16],
    depth: usize,
) -> bool {
    rules.iter().any(|words| {
        let value = |option: &str| {
            words
                .iter()
                .position(|word| word == option)
                .and_then(|at| words.get(at + 1))
                .map(String::as_str)
        };
        let target = value("-j").or_else(|| value("-g"));
        if target == Some("ACCEPT") {
            let stateful = words
                .iter()
                .any(|word| word == "--ctstate" || word == "--state");
            let listed = value(&format!("--{field}")).or_else(|| value(&format!("--{field}s")));
            return !stateful
                && listed.is_some_and(|list| ports.iter().all(|&port| legacy_covers(list, port)));
        }
        match target {
            Some(chain) if depth < MAX_JUMP_DEPTH && all.iter().any(|(name, _)| name == chain) => {
                let (jumped, _) = legacy_rules_until_final_drop(all, chain);
                legacy_reaches_accept(all, &jumped, field, ports, depth + 1)
            }
            _ => false,
        }
    })
}

/// Whether an iptables port list (`53`, `53,853`, `1:1024`) holds `port`.
fn legacy_covers(list: &str, port: u16) -> bool {
    list.split(',').any(|item| match item.split_once(':') {
        Some((low, high)) => {
            let low = low.parse().unwrap_or(0);
            let high = high.parse().unwrap_or(u16::MAX);
            (low..=high).contains(&port)
        }
        None => item.parse() == Ok(port),
    })
}

/// The words of an iptables-save rule; double quotes group (comments).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for character in line.chars() {
        match character {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(character),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The pure part of `hazards`, on nft's JSON. A chain drops by default when its policy
/// is drop, or when one of its rules drops or rejects everything that reaches it (as
/// ufw's and firewalld's final rules do in chains whose policy is accept); the accepts
/// that count are those before that rule, in the chain or in the chains it jumps to.
pub fn find_hazards(ruleset: &Value, ports: &[u16]) -> Vec<Hazard> {
    let objects: Vec<&Value> = ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut hazards = Vec::new();
    for chain in objects.iter().filter_map(|object| object.get("chain")) {
        let hook = chain["hook"].as_str().unwrap_or_default();
        if !matches!(hook, "input" | "output") {
            continue;
        }
        let (rules, final_drop) = rules_until_final_drop(&objects, chain);
        if chain["policy"] != "drop" && !final_drop {
            continue;
        }
        let missing: Vec<Needed> = NEEDED
            .into_iter()
            .filter(|needed| {
                needed.hook == hook && !reaches_accept(&objects, &rules, needed.field, ports, 0)
            })
            .collect();
        if !missing.is_empty() {
            hazards.push(Hazard {
                chain: format!(
                    "{} {} {}",
                    chain["family"].as_str().unwrap_or_default(),
                    chain["table"].as_str().unwrap_or_default(),
                    chain["name"].as_str().unwrap_or_default()
                ),
                missing,
                legacy: false,
            });
        }
    }
    hazards
}

/// The rules of `chain` before the first that drops or rejects whatever reaches it, and
/// whether there is one.
fn rules_until_final_drop<'a>(objects: &[&'a Value], chain: &Value) -> (Vec<&'a Value>, bool) {
    let mut rules = Vec::new();
    for rule in objects.iter().filter_map(|object| object.get("rule")) {
        if rule["family"] != chain["family"]
            || rule["table"] != chain["table"]
            || rule["chain"] != chain["name"]
        {
            continue;
        }
        if drops_everything(rule) {
            return (rules, true);
        }
        rules.push(rule);
    }
    (rules, false)
}

/// Whether `rule` drops or rejects every packet: a verdict and nothing that matches.
fn drops_everything(rule: &Value) -> bool {
    let statements: Vec<&Value> = rule["expr"].as_array().into_iter().flatten().collect();
    let verdict = statements
        .iter()
        .any(|statement| statement.get("drop").is_some() || statement.get("reject").is_some());
    verdict
        && statements
            .iter()
            .all(|statement| statement.get("match").is_none())
}

/// Chains jumped to, followed this deep at the most (nft itself allows 16).
const MAX_JUMP_DEPTH: usize = 16;

/// Whether `rules`, or the chains they jump or go to, accept `field` (sport/dport) in
/// `ports` statelessly.
fn reaches_accept(
    objects: &[&Value],
    rules: &[&Value],
    field: &str,
    ports: &[u16],
    depth: usize,
) -> bool {
    rules.iter().any(|rule| {
        if accepts_statelessly(rule, field, ports) {
            return true;
        }
        if depth >= MAX_JUMP_DEPTH {
            return false;
        }
        let target = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|statement| {
                statement["jump"]["target"]
                    .as_str()
                    .or_else(|| statement["goto"]["target"].as_str())
            });
        let Some(target) = target else {
            return false;
        };
        let chain = serde_json::json!({
            "family": rule["family"], "table": rule["table"], "name": target,
        });
        let (jumped, _) = rules_until_final_drop(objects, &chain);
        reaches_accept(objects, &jumped, field, ports, depth + 1)
    })
}

/// Whether `rule` accepts packets whose `field` (sport/dport) is one of `ports`, with no
/// condition on conntrack state.
fn accepts_statelessly(rule: &Value, field: &str, ports: &[u16]) -> bool {
    let statements: Vec<&Value> = rule["expr"].as_array().into_iter().flatten().collect();
    let accepts = statements
        .iter()
        .any(|statement| statement.get("accept").is_some());
    let uses_ct = statements
        .iter()
        .any(|statement| statement["match"]["left"].get("ct").is_some());
    let covers_ports = statements.iter().any(|statement| {
        let matched = &statement["match"];
        matched["left"]["payload"]["field"] == field
            && ports
                .iter()
                .all(|&port| value_contains(&matched["right"], port))
    });
    accepts && !uses_ct && covers_ports
}

fn value_contains(value: &Value, port: u16) -> bool {
    match value {
        Value::Number(number) => number.as_u64() == Some(u64::from(port)),
        Value::Array(items) => items.iter().any(|item| value_contains(item, port)),
        Value::Object(object) => {
            if let Some(range) = object.get("range").and_then(Value::as_array) {
                let bound = |index: usize| range.get(index).and_then(Value::as_u64);
                matches!((bound(0), bound(1)), (Some(low), Some(high)) if (low..=high).contains(&u64::from(port)))
            } else {
                object.values().any(|item| value_contains(item, port))
            }
        }
        _ => false,
    }
}

/// The accept rules an operator should add for `hazard`, in nft and iptables syntax,
/// scoped to `iface`: the interface dns-xdp guards. There, XDP drops every packet from a
/// DNS port that answers nothing this host sent, so a stateless source-port accept lets
/// in only real answers; on any other interface it would let in anything sent from
/// port 53 (`nmap -g 53`).
pub fn advice(hazard: &Hazard, ports: &[u16], iface: &str) -> Vec<String> {
    let list = |separator: &str| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(separator)
    };
    let ports_nft = match ports {
        [port] => port.to_string(),
        _ => format!("{{ {} }}", list(", ")),
    };
    let mut lines = Vec::new();
    for needed in &hazard.missing {
        let Needed {
            hook,
            field,
            lets_through,
        } = needed;
        let (nft_iface, iptables_iface) = if *hook == "input" {
            ("iifname", "-i")
        } else {
            ("oifname", "-o")
        };
        let iptables = match (hazard.legacy, hazard.chain.starts_with("ip6 ")) {
            (false, _) => {
                lines.push(format!(
                    "nft add rule {} {nft_iface} \"{iface}\" meta l4proto {{ udp, tcp }} th {field} {ports_nft} accept   # {lets_through}",
                    hazard.chain
                ));
                "iptables"
            }
            (true, false) => "iptables-legacy",
            (true, true) => "ip6tables-legacy",
        };
        for proto in ["udp", "tcp"] {
            lines.push(format!(
                "{iptables} -I {} {iptables_iface} {iface} -p {proto} -m multiport --{field}s {} -j ACCEPT   # {lets_through}",
                hook.to_uppercase(),
                list(",")
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("eth0"), "dns_xdp_eth0");
        assert_eq!(table_name("bond0.100"), "dns_xdp_bond0_2e100");
        assert_eq!(table_name("veth-a@b"), "dns_xdp_veth_2da_40b");
        // Two interfaces that the old mapping merged stay apart.
        assert_ne!(table_name("eth0.1"), table_name("eth0_1"));
        assert_ne!(table_name("eth0-1"), table_name("eth0.1"));
    }

    #[test]
    fn the_bypass_batch_notracks_both_directions_for_every_port() {
        let json = batch_json(bypass_batch("eth0", &[53, 853])).unwrap();
        let text = json.to_string();
        for needle in [
            "\"notrack\":null",
            "\"prio\":-300",
            "\"hook\":\"prerouting\"",
            "\"hook\":\"output\"",
            "\"iifname\"",
            "\"oifname\"",
            "\"dport\"",
            "\"sport\"",
            "853",
            // Queries only when addressed to this host: forwarded DNS keeps its NAT.
            "{\"fib\":{\"result\":\"type\",\"flags\":[\"daddr\"]}}",
            // Answers only when a local socket waits for them: masqueraded ones keep NAT.
            "{\"socket\":{\"key\":\"transparent\"}}",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        // An earlier version's table name goes too, when it differs.
        let dotted = batch_json(bypass_batch("eth0.1", &[53]))
            .unwrap()
            .to_string();
        assert!(dotted.contains("dns_xdp_eth0_2e1") && dotted.contains("dns_xdp_eth0_1"));
        let rules = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["add"].get("rule").is_some())
            .count();
        assert_eq!(rules, 4);
    }

    fn ruleset(policy: &str, rules: Vec<Value>) -> Value {
        let mut objects = vec![
            json!({"chain": {"family": "inet", "table": "filter", "name": "input", "hook": "input", "policy": policy}}),
        ];
        objects.extend(rules.into_iter().map(|expr| json!({"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": expr}})));
        json!({ "nftables": objects })
    }

    fn dport_accept(right: &Value) -> Value {
        json!([{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": right}}, {"accept": null}])
    }

    #[test]
    fn a_drop_policy_without_stateless_accepts_is_a_hazard() {
        let stateful = json!([
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"accept": null}
        ]);
        let hazards = find_hazards(&ruleset("drop", vec![stateful]), &[53]);
        assert_eq!(hazards.len(), 1);
        assert_eq!(hazards[0].chain, "inet filter input");
        let fields: Vec<_> = hazards[0]
            .missing
            .iter()
            .map(|needed| needed.field)
            .collect();
        assert_eq!(fields, ["dport", "sport"]);
        let advice = advice(&hazards[0], &[53], "eth0");
        assert!(
            advice[0].starts_with(
                "nft add rule inet filter input iifname \"eth0\" meta l4proto { udp, tcp } th dport 53 accept"
            ),
            "{advice:?}"
        );
        assert!(advice.iter().any(|line| {
            line.starts_with("iptables -I INPUT -i eth0 -p tcp -m multiport --sports 53 -j ACCEPT")
        }));
    }

    #[test]
    fn accepts_in_a_jumped_to_chain_count_and_a_final_drop_rule_is_a_drop_policy() {
        let sport = json!([{"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "sport"}}, "right": 53}}, {"accept": null}]);
        let mut objects = vec![
            json!({"chain": {"family": "inet", "table": "filter", "name": "input", "hook": "input", "policy": "drop"}}),
            json!({"chain": {"family": "inet", "table": "filter", "name": "dns"}}),
        ];
        let rule = |chain: &str, expr: Value| json!({"rule": {"family": "inet", "table": "filter", "chain": chain, "expr": expr}});
        objects.push(rule("input", json!([{"jump": {"target": "dns"}}])));
        objects.push(rule("dns", dport_accept(&json!(53))));
        objects.push(rule("dns", sport.clone()));
        assert!(find_hazards(&json!({"nftables": objects}), &[53]).is_empty());

        // ufw-like: policy accept, then a rule that drops everything, accepts after it.
        let ufw = json!({"nftables": [
            {"chain": {"family": "inet", "table": "filter", "name": "INPUT", "hook": "input", "policy": "accept"}},
            rule("INPUT", json!([{"counter": null}, {"drop": null}])),
            rule("INPUT", sport),
        ]});
        let hazards = find_hazards(&ufw, &[53]);
        assert_eq!(hazards.len(), 1);
        assert_eq!(hazards[0].missing.len(), 2, "{hazards:?}");
    }

    #[test]
    fn iptables_legacy_chains_are_checked_too() {
        let save = "# Generated by iptables-save\n*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DNS - [0:0]\n\
            -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
            -A INPUT -p udp -m udp --dport 53 -m comment --comment \"dns queries\" -j ACCEPT\n\
            -A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport 53 -j ACCEPT\n\
            -A OUTPUT -j DNS\n-A OUTPUT -j REJECT --reject-with icmp-port-unreachable\n\
            -A DNS -p udp -m multiport --sports 1:1024 -j ACCEPT\nCOMMIT\n";
        let hazards = find_legacy_hazards(save, "ip", &[53]);
        let found: Vec<_> = hazards
            .iter()
            .map(|hazard| {
                let fields: Vec<_> = hazard.missing.iter().map(|needed| needed.field).collect();
                (hazard.chain.as_str(), fields)
            })
            .collect();
        // INPUT accepts queries statelessly (the TCP accept needs a state: it does not
        // count, the UDP one does), not answers; OUTPUT's jump accepts answers from
        // port 53, not queries to upstream servers, before its final REJECT.
        assert_eq!(
            found,
            [
                ("ip filter INPUT", vec!["sport"]),
                ("ip filter OUTPUT", vec!["dport"])
            ]
        );
        assert!(hazards.iter().all(|hazard| hazard.legacy));
        let advice = advice(&hazards[0], &[53], "eth0");
        assert_eq!(advice.len(), 2, "{advice:?}");
        assert!(advice[0].starts_with(
            "iptables-legacy -I INPUT -i eth0 -p udp -m multiport --sports 53 -j ACCEPT"
        ));
        assert!(
            find_legacy_hazards(
                ":INPUT ACCEPT [0:0]\n-A INPUT -p udp -j ACCEPT\n",
                "ip6",
                &[53]
            )
            .is_empty()
        );
    }

    #[test]
    fn stateless_accepts_or_an_accept_policy_are_safe() {
        assert!(find_hazards(&ruleset("accept", vec![]), &[53]).is_empty());
        let sport = json!([{"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "sport"}}, "right": {"set": [53, 853]}}}, {"accept": null}]);
        let safe = ruleset("drop", vec![dport_accept(&json!(53)), sport.clone()]);
        assert!(find_hazards(&safe, &[53]).is_empty());
        let ranged = ruleset(
            "drop",
            vec![dport_accept(&json!({"range": [1, 1024]})), sport],
        );
        assert!(find_hazards(&ranged, &[53, 853]).is_empty());
        // An accept that also requires a conntrack state does not count.
        let stateful_accept = json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}},
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
            {"accept": null}
        ]);
        let hazards = find_hazards(&ruleset("drop", vec![stateful_accept]), &[53]);
        assert_eq!(hazards[0].missing.len(), 2);
    }
}
