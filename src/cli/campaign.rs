//! `optin-relay campaign …`: staged campaign release steered in the running relay through
//! its admin API (`/admin/campaigns`): list campaigns, show one, declare a size before or
//! during the canary, release or decline by hand. Requests and exit codes as in
//! [`super::admin`].

use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use super::ApiArgs;
use super::admin::{Align, Call, encode, items, num, table, text, when};

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Every campaign: stage, canary size and figures, held recipients.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One campaign (ACCOUNT and the X-Optin-Campaign id).
    Show {
        account: String,
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Declare a campaign's size: its canary becomes the policy's share of it
    /// (`[campaigns] canary_share`, at most `canary_max`).
    Declare {
        account: String,
        id: String,
        /// How many recipients the campaign will have.
        #[arg(long)]
        size: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Release now: the held mail goes.
    Release {
        account: String,
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Decline now: the held mail is removed and the sender gets a report.
    Decline {
        account: String,
        id: String,
        /// Why (in the report and the campaign's record).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// The request for a command, and the `--json`/`--url` options it came with.
pub fn call(command: CampaignCommand) -> (ApiArgs, Call) {
    let path = |account: &str, id: &str, verb: &str| {
        format!("/campaigns/{}/{}{verb}", encode(account), encode(id))
    };
    match command {
        CampaignCommand::List { api } => (
            api,
            Call::new(Method::GET, "/campaigns".into(), print_campaigns),
        ),
        CampaignCommand::Show { account, id, api } => (
            api,
            Call::new(Method::GET, path(&account, &id, ""), print_campaign),
        ),
        CampaignCommand::Declare {
            account,
            id,
            size,
            api,
        } => (
            api,
            Call::new(Method::POST, path(&account, &id, "/declare"), |v| {
                println!(
                    "campaign {} of {}: size {} declared, canary {}",
                    text(&v["id"]),
                    text(&v["account"]),
                    num(&v["declared_size"]),
                    num(&v["canary_size"])
                );
            })
            .with_body(json!({ "size": size })),
        ),
        CampaignCommand::Release { account, id, api } => (
            api,
            Call::new(Method::POST, path(&account, &id, "/release"), |v| {
                println!(
                    "campaign {} of {} released: {} held recipient(s) go now",
                    text(&v["id"]),
                    text(&v["account"]),
                    num(&v["held"])
                );
            }),
        ),
        CampaignCommand::Decline {
            account,
            id,
            reason,
            api,
        } => (
            api,
            Call::new(Method::POST, path(&account, &id, "/decline"), |v| {
                println!(
                    "campaign {} of {} declined: {} held recipient(s) removed; the sender gets \
                     a report",
                    text(&v["id"]),
                    text(&v["account"]),
                    num(&v["held"])
                );
            })
            .with_body(json!({ "reason": reason })),
        ),
    }
}

fn print_campaigns(v: &Value) {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|c| {
            let k = figures(c);
            vec![
                text(&c["account"]),
                text(&c["id"]),
                text(&c["stage"]),
                format!("{}/{}", num(&k["admitted"]), num(&c["canary_size"])),
                num(&k["delivered"]).to_string(),
                num(&k["hard_bounced"]).to_string(),
                num(&k["complaints"]).to_string(),
                num(&k["unsubscribes"]).to_string(),
                num(&c["held"]).to_string(),
            ]
        })
        .collect();
    table(
        &[
            ("ACCOUNT", Align::Left),
            ("CAMPAIGN", Align::Left),
            ("STAGE", Align::Left),
            ("CANARY", Align::Right),
            ("DELIVERED", Align::Right),
            ("HARD", Align::Right),
            ("COMPLAINTS", Align::Right),
            ("UNSUBS", Align::Right),
            ("HELD", Align::Right),
        ],
        &rows,
    );
    println!("{} campaign(s)", rows.len());
}

/// The canary's figures a campaign is judged on: the cluster's sums in cluster mode.
fn figures(c: &Value) -> &Value {
    if c["cluster"].is_object() {
        &c["cluster"]
    } else {
        &c["canary"]
    }
}

fn print_campaign(c: &Value) {
    println!(
        "campaign:     {} (account {})",
        text(&c["id"]),
        text(&c["account"])
    );
    println!("stage:        {}", text(&c["stage"]));
    println!("started:      {}", when(num(&c["started_ms"])));
    match c["declared_size"].as_u64() {
        Some(size) => println!("declared:     {size} recipients"),
        None => println!("declared:     (no size declared)"),
    }
    let k = figures(c);
    println!(
        "canary:       {} of {} sent, {} finished: {} delivered, {} hard bounces, {} \
         complaints, {} unsubscribes{}",
        num(&k["admitted"]),
        num(&c["canary_size"]),
        num(&k["finished"]),
        num(&k["delivered"]),
        num(&k["hard_bounced"]),
        num(&k["complaints"]),
        num(&k["unsubscribes"]),
        if c["cluster"].is_object() {
            " (across the cluster)"
        } else {
            ""
        }
    );
    if c["cluster"].is_object() {
        let mine = &c["canary"];
        println!(
            "this node:    {} sent, {} finished, {} delivered",
            num(&mine["admitted"]),
            num(&mine["finished"]),
            num(&mine["delivered"])
        );
    }
    println!("held:         {} recipient(s)", num(&c["held"]));
    match c["decided_ms"].as_u64() {
        Some(ms) => println!(
            "verdict:      {} by {} at {}{}",
            text(&c["stage"]),
            text(&c["decided_by"]),
            when(ms),
            c["reason"]
                .as_str()
                .map_or(String::new(), |r| format!(": {r}"))
        ),
        None => println!("verdict:      due at {}", when(num(&c["evaluate_at_ms"]))),
    }
}
