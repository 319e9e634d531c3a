//! Cluster mode for a campaign's canary in the scheduler: a new message of a campaign in
//! its canary waits whole until Redis says how many of its recipients the canary takes
//! ([`crate::governance::campaign::shared::ask`]); the answer comes back as
//! [`Event::Admitted`] and those recipients (its first held ones) go.

use super::Scheduler;
use super::queue::Progress;
use crate::delivery::Event;
use crate::envelope::QueueId;

impl Scheduler {
    /// Cluster mode: asks Redis how many of the message's `n` held recipients its
    /// campaign's canary takes; the answer comes back as [`Event::Admitted`].
    pub(super) fn ask_cluster(
        &self,
        id: QueueId,
        account: &str,
        campaign: &str,
        n: u64,
        size: u64,
    ) {
        let Some(cluster) = self
            .settings
            .feedback
            .campaigns
            .as_ref()
            .and_then(|c| c.cluster().cloned())
        else {
            return;
        };
        let (tx, key) = (
            self.tx.clone(),
            crate::governance::campaign::key(account, campaign),
        );
        tokio::spawn(async move {
            let answer = crate::governance::campaign::shared::ask(&cluster, &key, n, size).await;
            let _ = tx.send(Event::Admitted {
                id,
                campaign: key,
                answer,
            });
        });
    }

    /// Redis answered (or did not) how many of a message's held recipients are its
    /// campaign's canary: those go (its first held ones), or the verdict it has had
    /// applies.
    pub(super) fn admitted(
        &mut self,
        id: QueueId,
        key: &str,
        answer: Option<crate::governance::campaign::shared::Answer>,
    ) {
        use crate::governance::campaign::shared::{self, Answer};
        let Some(campaigns) = self.settings.feedback.campaigns.clone() else {
            return;
        };
        let send = match answer {
            Some(Answer::Decided(v)) => {
                shared::apply(&campaigns, key, &v);
                // Whether it changed the registry or not, this message follows it.
                self.campaign_verdict(key);
                return;
            }
            Some(Answer::Send(n)) => Some(n),
            None => None,
        };
        let nodes = campaigns.cluster().and_then(|c| c.share()).unwrap_or(1);
        let held = self.entries.get(&id).map_or(0, |e| {
            e.rcpts
                .iter()
                .filter(|r| r.held && r.status() != Progress::Done)
                .count() as u64
        });
        let mut go = campaigns.admitted(key, send, held, nodes);
        if go == 0 {
            return;
        }
        if let Some(e) = self.entries.get_mut(&id) {
            for r in e.rcpts.iter_mut() {
                if go > 0 && r.held && r.status() != Progress::Done {
                    r.held = false;
                    go -= 1;
                }
            }
        }
        self.dispatch(id);
    }
}
