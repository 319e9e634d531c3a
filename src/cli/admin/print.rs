//! How the admin CLI prints the API's answers as text: aligned tables, durations and
//! times, and one printer per kind of answer (`--json` prints the JSON instead).

use super::*;

/// A string as is, a number or boolean as text, null (or absent) as empty.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Seconds as `1h 2m 3s`.
pub(crate) fn duration(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Unix milliseconds as an RFC 3339 time and how long ago it was.
pub(crate) fn when(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let ago = SystemTime::now()
        .duration_since(at)
        .map_or(0, |d| d.as_secs());
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(at),
        duration(ago)
    )
}

#[derive(Clone, Copy)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Prints `rows` under `columns`, each column as wide as its widest cell, two spaces
/// apart; the last column is not padded.
pub(crate) fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| match (columns[i].1, i == last) {
                (Align::Left, true) => cell.clone(),
                (Align::Left, false) => format!("{cell:<w$}", w = widths[i]),
                (Align::Right, _) => format!("{cell:>w$}", w = widths[i]),
            })
            .collect();
        println!("{}", cells.join("  "));
    }
}

pub(crate) fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

pub(crate) fn print_summary(v: &Value) {
    println!(
        "queued: {} message(s), {} recipient(s) to deliver, {} held (queue hold, frozen accounts, campaign canaries)",
        num(&v["messages"]),
        num(&v["recipients"]),
        num(&v["held"])
    );
    let sites: Vec<Vec<String>> = items(&v["by_site"])
        .iter()
        .map(|s| {
            vec![
                text(&s["site"]),
                num(&s["recipients"]).to_string(),
                duration(num(&s["oldest_s"])),
            ]
        })
        .collect();
    if !sites.is_empty() {
        println!();
        table(
            &[
                ("SITE", Align::Left),
                ("RECIPIENTS", Align::Right),
                ("OLDEST", Align::Right),
            ],
            &sites,
        );
    }
    let accounts: Vec<Vec<String>> = items(&v["by_account"])
        .iter()
        .map(|a| {
            vec![
                text(&a["account"]),
                num(&a["messages"]).to_string(),
                num(&a["recipients"]).to_string(),
                num(&a["held"]).to_string(),
            ]
        })
        .collect();
    if !accounts.is_empty() {
        println!();
        table(
            &[
                ("ACCOUNT", Align::Left),
                ("MESSAGES", Align::Right),
                ("RECIPIENTS", Align::Right),
                ("HELD", Align::Right),
            ],
            &accounts,
        );
    }
}

/// The recipients of a message state not done yet.
pub(crate) fn undone(m: &Value) -> impl Iterator<Item = &Value> {
    items(&m["recipients"])
        .iter()
        .filter(|r| r["status"].as_str() != Some("done"))
}

/// One row of `queue list --live`.
pub(crate) fn message_row(m: &Value) -> Vec<String> {
    let total = items(&m["recipients"]).len();
    let pending = undone(m).count();
    let next = undone(m)
        .filter_map(|r| r["next_attempt_in_s"].as_u64())
        .min()
        .map_or("-".to_string(), |s| {
            if s == 0 { "now".into() } else { duration(s) }
        });
    let state = if let Some(hold) = m["hold"].as_str() {
        match hold {
            "operator" => "held",
            "account_frozen" => "frozen",
            "campaign_canary" => "canary",
            _ => "held",
        }
    } else if m["held"].as_bool() == Some(true) {
        "held"
    } else if undone(m).any(|r| r["status"].as_str() == Some("in_flight")) {
        "sending"
    } else {
        "waiting"
    };
    let mut domains: Vec<String> = undone(m).map(|r| text(&r["domain"])).collect();
    domains.sort_unstable();
    domains.dedup();
    vec![
        text(&m["id"]),
        duration(num(&m["age_s"])),
        text(&m["account"]),
        stream_of(m).to_string(),
        state.to_string(),
        format!("{pending}/{total}"),
        next,
        domains.join(","),
    ]
}

pub(crate) fn stream_of(m: &Value) -> &'static str {
    if m["marketing"].as_bool() == Some(true) {
        "marketing"
    } else {
        "transactional"
    }
}

/// A page of `queue list --live`: its rows, how many match in all, and how to get the next.
pub(crate) fn print_messages(v: &Value) {
    let rows: Vec<Vec<String>> = items(&v["messages"]).iter().map(message_row).collect();
    table(
        &[
            ("ID", Align::Left),
            ("AGE", Align::Right),
            ("ACCOUNT", Align::Left),
            ("STREAM", Align::Left),
            ("STATE", Align::Left),
            ("PENDING", Align::Right),
            ("NEXT TRY", Align::Right),
            ("DOMAINS", Align::Left),
        ],
        &rows,
    );
    let total = num(&v["total"]);
    match v["next_after"].as_str() {
        Some(next) => println!(
            "{} of {total} message(s) shown; the next page: --after {next}",
            rows.len()
        ),
        None => println!("{} of {total} message(s) shown", rows.len()),
    }
    println!(
        "STATE: held (queue hold), frozen (account frozen), canary (waits for its campaign's verdict)"
    );
}

/// `queue shape`: recipients by site and age, as Postfix's qshape.
pub(crate) fn print_shape(v: &Value) {
    let columns: Vec<u64> = items(&v["columns_min"])
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let mut head = vec![
        ("SITE".to_string(), Align::Left),
        ("T".to_string(), Align::Right),
    ];
    head.extend(columns.iter().map(|c| (c.to_string(), Align::Right)));
    head.push((
        format!("{}+", columns.last().copied().unwrap_or(0)),
        Align::Right,
    ));
    let rows: Vec<Vec<String>> = items(&v["sites"])
        .iter()
        .map(|r| {
            let mut row = vec![text(&r["site"]), num(&r["total"]).to_string()];
            row.extend(items(&r["counts"]).iter().map(|n| num(n).to_string()));
            row
        })
        .collect();
    let head: Vec<(&str, Align)> = head.iter().map(|(h, a)| (h.as_str(), *a)).collect();
    table(&head, &rows);
    println!("(recipients not yet delivered, by the age of their message in minutes)");
}

pub(crate) fn print_message(m: &Value) {
    println!("id:        {}", text(&m["id"]));
    println!("age:       {}", duration(num(&m["age_s"])));
    println!("account:   {}", text(&m["account"]));
    let mut stream = text(&m["stream"]);
    if let Some(l) = m["list"].as_str() {
        stream.push_str(&format!(", list {l}"));
    }
    if let Some(c) = m["campaign"].as_str() {
        stream.push_str(&format!(", campaign {c}"));
    }
    println!("stream:    {stream}");
    println!("sender:    <{}>", text(&m["sender"]));
    println!("size:      {} octets", num(&m["size"]));
    match m["hold"].as_str() {
        Some("operator") => println!("held:      by an operator (queue release ID lets it go)"),
        Some("account_frozen") => println!("held:      the account is frozen"),
        Some("campaign_canary") => {
            println!("held:      its recipients beyond the canary wait for the campaign's verdict")
        }
        _ => {}
    }
    println!("recipients:");
    for r in items(&m["recipients"]) {
        let state = match r["status"].as_str().unwrap_or("") {
            "waiting" => {
                let next = r["next_attempt_in_s"].as_u64().unwrap_or(0);
                format!(
                    "waiting, {} attempt(s), next {}",
                    num(&r["attempts"]),
                    if next == 0 {
                        "now".to_string()
                    } else {
                        format!("in {}", duration(next))
                    }
                )
            }
            "in_flight" => format!("being delivered, {} attempt(s) before", num(&r["attempts"])),
            other => other.to_string(),
        };
        println!("  <{}>  {state}", text(&r["address"]));
        if let Some(reply) = r["last_reply"].as_str() {
            println!(
                "      last: {} {} ago: {reply}",
                text(&r["last_event"]),
                duration(crate::envelope::now_ms().saturating_sub(num(&r["last_time_ms"])) / 1000)
            );
        }
    }
}

/// `since … by …: reason` of a `Frozen` object, or `no`.
pub(crate) fn frozen_text(f: &Value) -> String {
    if f.is_null() {
        return "no".into();
    }
    format!(
        "since {}, by {}: {}",
        when(num(&f["since_ms"])),
        text(&f["by"]),
        text(&f["reason"])
    )
}

pub(crate) fn print_accounts(v: &Value) {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|a| {
            let (q, r) = (&a["queued"], &a["results"]);
            vec![
                text(&a["account"]),
                num(&q["messages"]).to_string(),
                num(&q["recipients"]).to_string(),
                num(&q["held"]).to_string(),
                num(&r["delivered"]).to_string(),
                num(&r["deferred"]).to_string(),
                num(&r["hard_bounced"]).to_string(),
                num(&r["soft_bounced"]).to_string(),
                frozen_text(&a["frozen"]),
            ]
        })
        .collect();
    table(
        &[
            ("ACCOUNT", Align::Left),
            ("QUEUED", Align::Right),
            ("RECIPIENTS", Align::Right),
            ("HELD", Align::Right),
            ("DELIVERED", Align::Right),
            ("DEFERRED", Align::Right),
            ("HARD BOUNCED", Align::Right),
            ("SOFT BOUNCED", Align::Right),
            ("FROZEN", Align::Left),
        ],
        &rows,
    );
}

pub(crate) fn print_account(a: &Value) {
    let (q, r) = (&a["queued"], &a["results"]);
    println!("account:  {}", text(&a["account"]));
    println!("frozen:   {}", frozen_text(&a["frozen"]));
    println!(
        "queued:   {} message(s), {} recipient(s) to deliver, {} held",
        num(&q["messages"]),
        num(&q["recipients"]),
        num(&q["held"])
    );
    println!(
        "results:  {} delivered, {} deferred, {} hard bounced, {} soft bounced (recipients, \
         since the relay started)",
        num(&r["delivered"]),
        num(&r["deferred"]),
        num(&r["hard_bounced"]),
        num(&r["soft_bounced"])
    );
    print_health(&a["health"]);
}

/// How close the account is to each freeze threshold.
fn print_health(h: &Value) {
    if h.is_null() {
        return;
    }
    let hours = h["window_secs"].as_u64().unwrap_or(0) / 3600;
    let (volume, min) = (num(&h["volume"]), num(&h["min_volume"]));
    let judged = h["volume"].as_u64() >= h["min_volume"].as_u64();
    println!(
        "health:   {volume} message(s) in the last {hours}h{}{}{}",
        if h["scope"] == "cluster" {
            " across the cluster"
        } else {
            ""
        },
        if judged {
            String::new()
        } else {
            format!(" (rates are judged from {min})")
        },
        if h["freeze"].as_bool() == Some(false) {
            "; freezing is off"
        } else {
            ""
        }
    );
    if let Some(all) = h["thresholds"].as_object() {
        for (what, t) in all {
            let ratio = t["ratio"].as_f64().unwrap_or(0.0);
            let max = t["max_rate"].as_f64().unwrap_or(0.0);
            println!(
                "          {:<13} {:>5.1}% of the freeze threshold ({:.2}% of messages)",
                what.replace('_', " "),
                ratio * 100.0,
                max * 100.0
            );
        }
    }
}

/// Reasons as `bounce, manual`, or `none`.
pub(crate) fn reasons(v: &Value) -> String {
    let all: Vec<String> = items(v).iter().map(text).collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

pub(crate) fn print_standing(v: &Value) {
    println!("address:     {}", text(&v["address"]));
    let Some(account) = v["account"].as_str() else {
        println!(
            "suppressed:  global: {}",
            reasons(&v["suppressed"]["global"])
        );
        print_cause(&v["bounce_cause"]);
        println!("(give --account for its consent, every scope and the verdict)");
        return;
    };
    let list = v["list"].as_str();
    println!(
        "sending as:  account {account}, list {}, stream {}",
        list.unwrap_or("(none)"),
        text(&v["stream"])
    );
    match list {
        Some(l) => println!(
            "consent:     {} ({account}/{l})",
            if v["consent"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        ),
        None => println!("consent:     (no list)"),
    }
    let s = &v["suppressed"];
    println!("suppressed:  global: {}", reasons(&s["global"]));
    print_cause(&v["bounce_cause"]);
    println!("             account {account}: {}", reasons(&s["account"]));
    if let Some(l) = list {
        println!("             list {account}/{l}: {}", reasons(&s["list"]));
    }
    println!("verdict:     {}", text(&v["verdict"]));
}

/// What made a bounce suppression, and how to lift it when the cause was the relay's own.
fn print_cause(c: &Value) {
    if c.is_null() {
        return;
    }
    println!(
        "bounce:      {} ago: {} {} ({}, from {})",
        text(&c["age"]),
        text(&c["status"]),
        text(&c["diagnostic"]),
        text(&c["category"]),
        text(&c["site"])
    );
    // A bounce mailed back suppresses for its account; one at delivery, everywhere.
    let scope = match c["via"].as_str() {
        Some("delivery") | None => String::new(),
        Some(_) => format!(" --account {}", text(&c["account"])),
    };
    println!(
        "             if that was this relay's own fault (DNS, a first-run setting), lift it: \
         optin-relay suppress remove {}{scope} --reason bounce",
        text(&c["address"])
    );
}

pub(crate) fn print_policy(v: &Value) {
    match v["path"].as_str() {
        Some(p) => println!("policy file:  {p}"),
        None => println!("policy file:  none (the embedded policy; nothing to reload)"),
    }
    println!("generation:   {}", num(&v["generation"]));
    println!("loaded:       {}", when(num(&v["loaded_at_ms"])));
    let Some(at) = v["last_attempt_ms"].as_u64() else {
        println!("last reload:  none since the start");
        return;
    };
    let problems = items(&v["last_error"]);
    println!(
        "last reload:  {}, by {}: {}",
        when(at),
        text(&v["last_trigger"]),
        if v["last_error"].is_null() {
            "ok".to_string()
        } else {
            format!(
                "refused ({} problem(s)); the policy above stays",
                problems.len()
            )
        }
    );
    for p in problems {
        println!("{}", indented(&text(p)));
    }
}

/// A problem under its heading: every line indented (TOML errors span several).
pub(crate) fn indented(problem: &str) -> String {
    problem
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `GET /admin/messages/{id}`: one line per recipient (its tag), its last state and why.
pub(crate) fn print_history(v: &Value) {
    let ids: Vec<&str> = v["ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "{}: {}",
        v["lookup"].as_str().unwrap_or("-"),
        ids.join(", ")
    );
    for r in v["recipients"].as_array().into_iter().flatten() {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let mut line = format!("  {}  {}  {}", s("id"), s("rcpt"), s("state"));
        if let Some(n) = r["attempts"].as_u64() {
            line.push_str(&format!(", {n} attempt(s)"));
        }
        if !s("category").is_empty() {
            line.push_str(&format!(", {} ({})", s("category"), s("via")));
        }
        if !s("last_reply").is_empty() {
            line.push_str(&format!(": {}", s("last_reply")));
        }
        println!("{line}");
    }
    let queued = v["queued"].as_array().map_or(0, Vec::len);
    if queued > 0 {
        println!("still queued: {queued} message(s) (see `queue show --live ID`)");
    }
}

/// `GET /admin/cluster`: this node's view of Redis, then one line per node.
pub(crate) fn print_cluster(v: &Value) {
    let up = v["redis_up"].as_bool().unwrap_or(false);
    println!("this node:    {}", text(&v["node"]));
    println!(
        "redis:        {} ({})",
        text(&v["redis"]),
        if up {
            "reachable".to_string()
        } else {
            format!(
                "unreachable: running on 1/{} of the shared limits",
                num(&v["live_nodes"]).max(1)
            )
        }
    );
    println!("live nodes:   {}", num(&v["live_nodes"]));
    println!("leases held:  {}", num(&v["leases_held"]));
    let nodes = items(&v["nodes"]);
    if nodes.is_empty() {
        println!("no node table (Redis did not answer)");
        return;
    }
    let now = v["redis_time_ms"].as_u64().unwrap_or(0);
    println!(
        "{:<24} {:<6} {:<10} {:<10} {:>18}  NOTE",
        "NODE", "STATE", "VERSION", "POLICY", "LAST SEEN"
    );
    for n in nodes {
        let seen = num(&n["last_seen_ms"]);
        let state = if n["live"].as_bool() == Some(true) {
            "live"
        } else {
            "gone"
        };
        let note = if n["policy_drift"].as_bool() == Some(true) {
            format!("policy differs ({})", text(&n["policy_digest"]))
        } else {
            String::new()
        };
        println!(
            "{:<24} {:<6} {:<10} {:<10} {:>18}  {}",
            text(&n["id"]),
            state,
            text(&n["version"]),
            format!("gen {}", num(&n["policy_generation"])),
            format!("{:.1} s ago", now.saturating_sub(seen) as f64 / 1000.0),
            note
        );
    }
}
