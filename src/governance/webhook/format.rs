//! The bodies of the formats other applications already read, made from a stored event
//! (the relay's own JSON): listmonk's bounce API, and Amazon SES notifications as SNS
//! posts them.
//!
//! - **listmonk** (`POST /api/bounces`): `email`, `campaign_uuid` (the message's
//!   `X-Optin-Campaign`, which the sending listmonk sets to its campaign's UUID), `source`,
//!   `type` (`hard`, `soft`, `complaint`) and `meta` (the category, status, diagnostic).
//! - **SES** (an SNS `Notification` whose `Message` is the SES notification as a JSON
//!   string): `notificationType` `Bounce` (`bounce.bounceType`, `bounceSubType`,
//!   `bouncedRecipients`, `timestamp`, `feedbackId`), `Complaint` (`complaint.
//!   complainedRecipients`, `complaintFeedbackType`, …) or `Delivery` (`delivery.
//!   recipients`, `processingTimeMillis`, `smtpResponse`, …), each with its `mail` object
//!   (`timestamp`, `messageId`, `source`, `destination`). There is no AWS signature: the
//!   relay's own `X-Optin-Signature` authenticates the request.

use serde_json::{Value, json};

use crate::policy::webhook::Format;

/// The body of `stored` (the relay's own event JSON) in `format`.
pub fn render(format: Format, stored: &[u8]) -> Result<Vec<u8>, String> {
    let event: Value =
        serde_json::from_slice(stored).map_err(|e| format!("unreadable event: {e}"))?;
    let body = match format {
        Format::Optin => return Ok(stored.to_vec()),
        Format::Listmonk => listmonk(&event)?,
        Format::Ses => ses(&event)?,
    };
    Ok(serde_json::to_vec(&body).expect("JSON"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// listmonk's `POST /api/bounces` body.
fn listmonk(e: &Value) -> Result<Value, String> {
    let d = &e["detail"];
    let kind = match str_of(e, "event") {
        "complaint" => "complaint",
        "bounce" if d["hard"] == true => "hard",
        "bounce" => "soft",
        other => return Err(format!("listmonk takes no {other:?} event")),
    };
    let mut body = json!({
        "email": str_of(e, "address"),
        "source": "optin-relay",
        "type": kind,
        "meta": {
            "event_id": str_of(e, "id"),
            "list": e["list"],
            "category": d["category"],
            "status": d["status"],
            "diagnostic": d["diagnostic"],
            "via": d["via"],
            "feedback_type": d["feedback_type"],
        },
    });
    if let Some(c) = d["campaign"].as_str().filter(|c| !c.is_empty()) {
        body["campaign_uuid"] = json!(c);
    }
    Ok(body)
}

/// RFC 3339 in UTC with milliseconds, as SES writes its timestamps.
fn iso(time_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(time_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The SES bounce subtype of a category.
fn bounce_sub_type(category: &str) -> &'static str {
    match category {
        "invalid_recipient" | "bad_domain" | "inactive" => "NoEmail",
        "mailbox_full" => "MailboxFull",
        "message_too_large" => "MessageTooLarge",
        "content_rejected" => "ContentRejected",
        _ => "General",
    }
}

/// An SNS `Notification` carrying the SES notification of `e`.
fn ses(e: &Value) -> Result<Value, String> {
    let d = &e["detail"];
    let time_ms = e["time_ms"].as_u64().unwrap_or(0);
    let at = iso(time_ms);
    let address = str_of(e, "address");
    let id = str_of(e, "id");
    let sent_ms = time_ms.saturating_sub(d["delay_ms"].as_u64().unwrap_or(0));
    let mail = json!({
        "timestamp": iso(sent_ms),
        "messageId": d["queue_id"].as_str().unwrap_or(id),
        "source": d["sender"].as_str().unwrap_or(""),
        "sourceArn": "",
        "sendingAccountId": str_of(e, "account"),
        "destination": [address],
        "headersTruncated": false,
        "headers": [],
        "commonHeaders": {},
        "tags": {
            "optin-account": [str_of(e, "account")],
            "optin-list": [e["list"].as_str().unwrap_or("")],
            "optin-campaign": [d["campaign"].as_str().unwrap_or("")],
        },
    });
    let message = match str_of(e, "event") {
        "bounce" => {
            let status = d["status"].as_str().unwrap_or("");
            let bounce_type = match status.as_bytes().first() {
                Some(b'5') => "Permanent",
                Some(b'4') => "Transient",
                _ => "Undetermined",
            };
            json!({
                "notificationType": "Bounce",
                "bounce": {
                    "bounceType": bounce_type,
                    "bounceSubType": bounce_sub_type(d["category"].as_str().unwrap_or("")),
                    "bouncedRecipients": [{
                        "emailAddress": address,
                        "action": "failed",
                        "status": status,
                        "diagnosticCode": d["diagnostic"].as_str().unwrap_or(""),
                    }],
                    "timestamp": at,
                    "feedbackId": id,
                    "reportingMTA": "dns; optin-relay",
                },
                "mail": mail,
            })
        }
        "complaint" => json!({
            "notificationType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": address}],
                "timestamp": at,
                "feedbackId": id,
                "complaintFeedbackType": d["feedback_type"].as_str().unwrap_or("abuse"),
                "arrivalDate": at,
            },
            "mail": mail,
        }),
        "delivered" => json!({
            "notificationType": "Delivery",
            "delivery": {
                "timestamp": at,
                "processingTimeMillis": d["delay_ms"].as_u64().unwrap_or(0),
                "recipients": [address],
                "smtpResponse": d["reply"].as_str().unwrap_or(""),
                "reportingMTA": "optin-relay",
                "remoteMtaIp": "",
            },
            "mail": mail,
        }),
        other => return Err(format!("SES notifications carry no {other:?} event")),
    };
    Ok(json!({
        "Type": "Notification",
        "MessageId": id,
        "TopicArn": format!("arn:optin-relay:sns:{}", str_of(e, "account")),
        "Message": serde_json::to_string(&message).expect("JSON"),
        "Timestamp": at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(event: &str, detail: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": "1767225600123456-9f2c4e1a7b3d5c60",
            "account": "news",
            "event": event,
            "address": "reader@example.net",
            "list": "weekly",
            "time_ms": 1_767_225_600_123u64,
            "detail": detail,
        }))
        .unwrap()
    }

    /// A field (JSON pointer) and what it must be.
    type Check<'a> = (&'a str, fn(&Value) -> bool);

    fn has(v: &Value, fields: &[Check<'_>]) {
        for (name, ok) in fields {
            let got = v.pointer(name).unwrap_or(&Value::Null);
            assert!(ok(got), "{name}: {got} in {v}");
        }
    }

    #[test]
    fn listmonk_bounce_api_fields() {
        let b = stored(
            "bounce",
            json!({"status": "5.1.1", "diagnostic": "smtp; 550 5.1.1 gone", "category":
                "invalid_recipient", "hard": true, "via": "async", "campaign": "2f3a-uuid"}),
        );
        let v: Value = serde_json::from_slice(&render(Format::Listmonk, &b).unwrap()).unwrap();
        // listmonk's documented fields: email, campaign_uuid, source, type, meta.
        assert_eq!(v["email"], "reader@example.net");
        assert_eq!(v["campaign_uuid"], "2f3a-uuid");
        assert_eq!(v["source"], "optin-relay");
        assert_eq!(v["type"], "hard");
        assert_eq!(v["meta"]["category"], "invalid_recipient");
        let soft = stored("bounce", json!({"hard": false, "category": "mailbox_full"}));
        let v: Value = serde_json::from_slice(&render(Format::Listmonk, &soft).unwrap()).unwrap();
        assert_eq!(v["type"], "soft");
        assert!(
            v.get("campaign_uuid").is_none(),
            "no campaign, no uuid: {v}"
        );
        let c = stored("complaint", json!({"feedback_type": "abuse", "via": "arf"}));
        let v: Value = serde_json::from_slice(&render(Format::Listmonk, &c).unwrap()).unwrap();
        assert_eq!(v["type"], "complaint");
        assert!(render(Format::Listmonk, &stored("delivered", json!({}))).is_err());
    }

    fn message(body: &[u8]) -> (Value, Value) {
        let sns: Value = serde_json::from_slice(body).unwrap();
        let m: Value = serde_json::from_str(sns["Message"].as_str().unwrap()).unwrap();
        (sns, m)
    }

    #[test]
    fn ses_notification_fields() {
        let is_str: fn(&Value) -> bool = Value::is_string;
        let is_arr: fn(&Value) -> bool = Value::is_array;
        let is_num: fn(&Value) -> bool = Value::is_u64;
        let b = stored(
            "bounce",
            json!({"status": "5.1.1", "diagnostic": "smtp; 550 5.1.1 gone", "category":
                "invalid_recipient", "hard": true, "queue_id": "0000018C2A2B3C4D",
                "sender": "news@news.example"}),
        );
        let (sns, m) = message(&render(Format::Ses, &b).unwrap());
        // SNS: Type, MessageId, TopicArn, Message, Timestamp.
        has(
            &sns,
            &[
                ("/Type", |v| v == "Notification"),
                ("/MessageId", is_str),
                ("/TopicArn", is_str),
                ("/Timestamp", is_str),
            ],
        );
        // SES bounce notification: notificationType, bounce{bounceType, bounceSubType,
        // bouncedRecipients[{emailAddress, action, status, diagnosticCode}], timestamp,
        // feedbackId}, mail{timestamp, messageId, source, destination}.
        has(
            &m,
            &[
                ("/notificationType", |v| v == "Bounce"),
                ("/bounce/bounceType", |v| v == "Permanent"),
                ("/bounce/bounceSubType", |v| v == "NoEmail"),
                ("/bounce/bouncedRecipients/0/emailAddress", |v| {
                    v == "reader@example.net"
                }),
                ("/bounce/bouncedRecipients/0/status", |v| v == "5.1.1"),
                ("/bounce/bouncedRecipients/0/diagnosticCode", is_str),
                ("/bounce/timestamp", |v| {
                    v.as_str()
                        .is_some_and(|t| t.starts_with("2026-01-01T00:00:00.123"))
                }),
                ("/bounce/feedbackId", is_str),
                ("/mail/timestamp", is_str),
                ("/mail/messageId", |v| v == "0000018C2A2B3C4D"),
                ("/mail/source", |v| v == "news@news.example"),
                ("/mail/destination", is_arr),
            ],
        );
        let c = stored("complaint", json!({"feedback_type": "abuse"}));
        let (_, m) = message(&render(Format::Ses, &c).unwrap());
        has(
            &m,
            &[
                ("/notificationType", |v| v == "Complaint"),
                ("/complaint/complainedRecipients/0/emailAddress", is_str),
                ("/complaint/timestamp", is_str),
                ("/complaint/feedbackId", is_str),
                ("/complaint/complaintFeedbackType", |v| v == "abuse"),
                ("/mail/destination/0", is_str),
            ],
        );
        let d = stored(
            "delivered",
            json!({"reply": "250 2.0.0 ok", "delay_ms": 1500}),
        );
        let (_, m) = message(&render(Format::Ses, &d).unwrap());
        has(
            &m,
            &[
                ("/notificationType", |v| v == "Delivery"),
                ("/delivery/timestamp", is_str),
                ("/delivery/processingTimeMillis", is_num),
                ("/delivery/recipients/0", is_str),
                ("/delivery/smtpResponse", |v| v == "250 2.0.0 ok"),
                ("/mail/timestamp", |v| {
                    v.as_str()
                        .is_some_and(|t| t.starts_with("2025-12-31T23:59:58.623"))
                }),
            ],
        );
        assert!(render(Format::Ses, &stored("opened", json!({}))).is_err());
    }
}
