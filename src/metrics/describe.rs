//! The help text of every metric, given to the recorder once when it is installed
//! ([`super::install`]), by area.

use metrics::{describe_counter, describe_gauge, describe_histogram};

use super::*;

pub(super) fn describe() {
    describe_sessions();
    describe_state();
    describe_delivery();
    describe_limits();
    super::cluster::describe_cluster();
}

/// SMTP sessions, commands, replies and verdicts.
fn describe_sessions() {
    describe_counter!(
        SMTP_CONNECTIONS,
        "SMTP connections accepted, by listener kind (plain, tls)."
    );
    describe_counter!(
        SMTP_CONNECTIONS_REFUSED,
        "SMTP connections refused at once, by reason (total, per_ip, untrusted_per_ip)."
    );
    describe_gauge!(SMTP_SESSIONS_ACTIVE, "SMTP sessions currently open.");
    describe_counter!(
        SMTP_REPLIES,
        "SMTP replies sent, by class (2xx, 3xx, 4xx, 5xx)."
    );
    describe_counter!(
        SMTP_COMMANDS,
        "SMTP command lines received (complete lines within the length limit), by verb \
         (EHLO, HELO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT, VRFY, EXPN, HELP, STARTTLS, \
         AUTH; unknown for anything else)."
    );
    describe_counter!(MESSAGES_ACCEPTED, "Messages accepted into the spool.");
    describe_counter!(
        POLICY_VERDICTS,
        "Consent and suppression verdicts, one per recipient decided, by reason (allowed, \
         consent_missing, consent_expired, unsubscribed, bounced, complaint, blocked, frozen, \
         content)."
    );
    describe_counter!(
        RECIPIENTS_WITHHELD,
        "Recipients refused by the consent and suppression policy, by reason \
         (consent_missing, consent_expired, unsubscribed_list, unsubscribed_all, bounced, \
         complaint, blocked) \
         and stage (rcpt, data)."
    );
}

/// The lists, refused messages, the spool and the queue.
fn describe_state() {
    describe_gauge!(
        LISTS_ENTRIES,
        "Entries in the consent and suppression snapshot in service."
    );
    describe_gauge!(
        LISTS_DELTA,
        "Addresses changed by the journal since the snapshot (folded by compaction)."
    );
    describe_gauge!(
        LISTS_SNAPSHOT_AGE,
        "Age of the snapshot in service, in seconds."
    );
    describe_gauge!(
        LISTS_SNAPSHOT_BYTES,
        "Size of the snapshot file in service, in bytes."
    );
    describe_counter!(
        LISTS_ERRORS,
        "Failures to follow the lists directory (a refused snapshot, an unreadable journal)."
    );
    describe_counter!(
        LISTS_COMPACTIONS,
        "Journal compactions into a new snapshot."
    );
    describe_counter!(
        MESSAGES_REFUSED,
        "Messages refused, by reason: account_frozen at MAIL; too_big, bare_line_ending, nul, \
         line_too_long, mail_loop, spool_error, optin_header, withheld, account_gone, \
         sender_identity, operator_contact, footer_impossible at the end of DATA/BDAT."
    );
    describe_histogram!(
        SPOOL_COMMIT_SECONDS,
        "Time of one spool group commit (write + fdatasync), in seconds."
    );
    describe_gauge!(
        SPOOL_BYTES,
        "Bytes of the spool's queue files (message segments and recipient journals)."
    );
    describe_gauge!(
        SPOOL_SEGMENTS,
        "Spool segments on disk (each deleted once its last message is done)."
    );
    describe_gauge!(QUEUE_MESSAGES, "Messages in the delivery queue.");
    describe_gauge!(
        SPOOL_DISK_FREE,
        "Bytes the relay may still write on the file system holding the spool."
    );
    describe_gauge!(
        SPOOL_DISK_TOTAL,
        "Size in bytes of the file system holding the spool."
    );
    describe_gauge!(
        TLS_NOT_AFTER,
        "When the inbound TLS certificate ([tls] certificate) expires, in Unix seconds \
         (absent with the self-signed one)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the label version is the running relay's version."
    );
    describe_gauge!(QUEUE_RECIPIENTS, "Recipients not yet delivered or bounced.");
}

/// Delivery, policy reloads, sites, DSNs and what governance counts.
fn describe_delivery() {
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "Delivery transactions attempted, by result (ok, failed)."
    );
    describe_counter!(
        DELIVERY_RECIPIENTS,
        "Recipient outcomes, by result (delivered, deferred, bounced, expired)."
    );
    describe_gauge!(
        ACCOUNT_THRESHOLD,
        "An account's rate over its freeze threshold, by account and threshold (complaints, \
         hard_bounces, unsubscribes): 1 is where it freezes (judged once the window holds \
         min_volume messages)."
    );
    describe_counter!(
        CAMPAIGN_VERDICTS,
        "Campaign canary verdicts, by verdict (released, declined)."
    );
    describe_counter!(
        ACCOUNTS_FROZEN,
        "Accounts frozen, by what froze them (health, content, admin)."
    );
    describe_counter!(
        POLICY_RELOADS,
        "Policy reloads (file change, SIGHUP or admin API), by result (ok, refused)."
    );
    describe_gauge!(
        POLICY_GENERATION,
        "How many policies have been in force since start (1: the one loaded at start)."
    );
    describe_gauge!(
        QUEUE_SITE_RECIPIENTS,
        "Recipients queued, by site (the busiest sites by name, the rest as other, \
         unresolved for domains not yet looked up)."
    );
    describe_gauge!(
        QUEUE_SITE_OLDEST,
        "Age of the oldest queued message, by site (as optin_queue_site_recipients)."
    );
    describe_counter!(
        DELIVERY_SITE_RECIPIENTS,
        "Recipient outcomes, by site (as optin_queue_site_recipients) and result \
         (delivered, deferred, bounced, expired)."
    );
    describe_counter!(
        DSN_GENERATED,
        "Delivery status notifications generated, by action (failed, delayed, relayed)."
    );
    describe_counter!(
        CONSENT_CHANGES,
        "Consents granted or withdrawn through the accounts' own paths, by action (grant, \
         withdraw) and how (api, upload, form, double_opt_in, operator, \
         reconfirmed)."
    );
    describe_counter!(
        SUBSCRIPTIONS,
        "Subscription form posts and confirmation links, by outcome (confirmation_sent, \
         subscribed, quiet: nothing sent for an address already subscribed, suppressed or \
         over its limit, refused, honeypot, confirmed, invalid_link, expired_link)."
    );
    describe_counter!(
        UPLOAD_JOBS,
        "Consent upload jobs of the account API finished, by state (done, failed)."
    );
    describe_counter!(
        ACCOUNT_API_REFUSED,
        "Requests to the account API (/account/...) refused for a missing, unknown or \
         revoked key."
    );
    describe_counter!(
        UNSUBSCRIBES,
        "Unsubscribes recorded through the relay's links, by scope (list, account) and \
         via (mail, http)."
    );
    describe_counter!(
        BOUNCE_SUPPRESSIONS,
        "Bounces recorded as suppressions (at once, or a full mailbox's streak complete)."
    );
    describe_counter!(
        BOUNCES,
        "Bounces by category (invalid_recipient, bad_domain, inactive, mailbox_full, \
         message_too_large, spam_block, auth_failure, rate_limited, content_rejected, \
         routing, transient, other) and via (sync: refused in the relay's own transaction; \
         async: mailed back to the return path)."
    );
    describe_counter!(
        BOUNCE_MAIL,
        "Mail to a return path, by outcome (bounce, delayed, auto_reply, complaint, \
         unverified: no genuine token, kept aside; not_a_bounce: kept aside; too_complex: \
         refused)."
    );
    describe_counter!(
        ENGAGEMENTS,
        "Opens (the pixel) and clicks (a tracked link) recorded, by kind (open, click)."
    );
    describe_counter!(
        TRACKING_REFUSED,
        "Requests to /o/ or /c/ without a genuine token, by kind: nothing counted, no \
         redirect."
    );
    describe_counter!(
        RETURN_PATH_TOO_LONG,
        "Recipients sent with the client's own sender because the return path would have \
         been too long (a path over 256 octets, a local part over 200)."
    );
    describe_counter!(
        COMPLAINTS,
        "Spam complaints recorded as suppressions, by via (arf: a feedback report mailed to \
         the feedback address; form: the report form of the HTTP listener)."
    );
    describe_counter!(
        COMPLAINT_REPORTS_MALFORMED,
        "Mail to the feedback address that was not a usable feedback report (kept aside in \
         complaints/malformed in the spool directory)."
    );
    describe_counter!(
        ACCOUNT_RECIPIENTS,
        "Recipient outcomes, by account (from the policy) and result (delivered, deferred, \
         hard_bounced, soft_bounced)."
    );
}

/// Throttles and shaping, AUTH, strangers' limits, HTTP, damage found.
fn describe_limits() {
    describe_histogram!(
        THROTTLE_WAIT,
        "How long a message waited for its destination's rate limits, in seconds."
    );
    describe_counter!(
        SHAPING_ACTIONS,
        "Adaptive shaping on a destination's replies, by action (slow, suspend)."
    );
    describe_counter!(
        AUTH_ATTEMPTS,
        "SMTP AUTH attempts, by result: ok, failed (wrong credentials), locked (refused \
         without a check: too many failures of the client address or username), busy \
         (every password verification slot was taken)."
    );
    describe_counter!(
        UNTRUSTED_REFUSALS,
        "Mail from clients no account knows refused by its own limits, by reason: \
         report_rate (too many reports from one client address), too_big (over the size \
         limit of mail to the relay's own addresses), mime_budget (too many MIME parts or \
         too deep a nesting to parse)."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections refused at once, by listener (public, admin) and reason (total: \
         max_connections, per_ip: max_connections_per_ip)."
    );
    describe_counter!(
        HTTP_TIMEOUTS,
        "HTTP connections closed because the client was too slow, by listener (public, \
         admin) and stage (tls: the handshake, header: the request head, body: the request \
         body, idle: silence between requests or while it should read the answer)."
    );
    describe_counter!(
        SPOOL_QUARANTINED,
        "Damaged spool data copied to quarantine/ (found at start, or when a message was \
         read back for delivery)."
    );
    describe_counter!(
        SPOOL_UNREADABLE,
        "Queued messages that could not be read back from the spool, by outcome (returned: \
         bounced to the sender with a DSN built from the envelope; dropped: no envelope to \
         return it with, the record is in quarantine/)."
    );
    describe_gauge!(
        LISTS_SNAPSHOT_REFUSED,
        "1 while the lists snapshot file is missing, empty, damaged or older than the last \
         one compiled, and the last good snapshot keeps serving; 0 otherwise."
    );
}
