//! Filter policies: which channels a principal may subscribe to and publish on.

use std::collections::HashSet;
use std::fmt;

use crate::auth::Principal;
use crate::error::Denied;
use crate::ids::ChannelName;

/// The seed system's five channels, the default allow-list.
pub const DEFAULT_CHANNELS: [&str; 5] = ["cars", "robots", "tech", "music", "media"];

/// Decides, per principal and channel, whether a subscribe or publish may go ahead.
///
/// The fan-out engine never consults channel names itself: every decision is here, so that a
/// rejected publish is refused before anything is appended or delivered.
pub trait FilterPolicy: Send + Sync + fmt::Debug {
    /// Whether `principal` may subscribe to `channel`.
    fn check_subscribe(&self, principal: &Principal, channel: &ChannelName) -> Result<(), Denied>;

    /// Whether `principal` may publish on `channel`. By default, the same rule as subscribing.
    fn check_publish(&self, principal: &Principal, channel: &ChannelName) -> Result<(), Denied> {
        self.check_subscribe(principal, channel)
    }
}

/// Allows only the listed channels, for everyone. [`Default`] gives the seed's five channels.
#[derive(Clone)]
pub struct AllowList {
    channels: HashSet<ChannelName>,
}

impl AllowList {
    /// An allow-list of exactly these channels.
    pub fn new(channels: impl IntoIterator<Item = ChannelName>) -> Self {
        Self {
            channels: channels.into_iter().collect(),
        }
    }

    /// Whether `channel` is on the list.
    pub fn contains(&self, channel: &ChannelName) -> bool {
        self.channels.contains(channel)
    }

    /// The listed channels, sorted.
    pub fn channels(&self) -> Vec<ChannelName> {
        let mut v: Vec<_> = self.channels.iter().cloned().collect();
        v.sort();
        v
    }
}

impl Default for AllowList {
    fn default() -> Self {
        // The names are constants known to be valid.
        Self::new(
            DEFAULT_CHANNELS
                .iter()
                .map(|c| ChannelName::parse(c).expect("valid constant")),
        )
    }
}

impl fmt::Debug for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AllowList").field(&self.channels()).finish()
    }
}

impl FilterPolicy for AllowList {
    fn check_subscribe(&self, _principal: &Principal, channel: &ChannelName) -> Result<(), Denied> {
        if self.contains(channel) {
            Ok(())
        } else {
            Err(Denied::ChannelNotAllowed)
        }
    }
}

/// Allows every well-formed channel.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl FilterPolicy for AllowAll {
    fn check_subscribe(
        &self,
        _principal: &Principal,
        _channel: &ChannelName,
    ) -> Result<(), Denied> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn default_allow_list_is_the_seed_channels() {
        let p = Principal::new("k", Role::Client);
        let list = AllowList::default();
        for c in DEFAULT_CHANNELS {
            let c = ChannelName::parse(c).unwrap();
            assert_eq!(list.check_subscribe(&p, &c), Ok(()));
            assert_eq!(list.check_publish(&p, &c), Ok(()));
        }
        let sports = ChannelName::parse("sports").unwrap();
        assert_eq!(
            list.check_publish(&p, &sports),
            Err(Denied::ChannelNotAllowed)
        );
        assert_eq!(
            list.check_subscribe(&p, &sports),
            Err(Denied::ChannelNotAllowed)
        );
        assert_eq!(AllowAll.check_publish(&p, &sports), Ok(()));
    }
}
