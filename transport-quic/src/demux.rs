//! Which QUIC stream each item of a connection's outbound queue goes to: replies and notices to
//! the control stream, each channel's messages to that channel's own stream. Sans-IO: queue
//! items in, [`Route`]s out; `conn.rs` turns routes into stream writes.
//!
//! A channel's stream lives from its subscription's first item (usually the `subscribed`
//! reply; a message published between the hub registering the subscription and the session
//! queueing the reply can come first) to its `unsubscribed` or `invalidated` end frame.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use broker_core::{ChannelName, Envelope, Outbound, ServerFrame};
use rustc_hash::FxHasher;

/// What to do with one outbound item.
#[derive(Debug)]
pub(crate) enum Route {
    /// Write this reply or notice on the control stream.
    Control(Box<ServerFrame>),
    /// Open the channel's stream and write its `subscribed` header.
    Open(ChannelName),
    /// Write this message on its channel's stream, opened by an earlier route.
    Message(Arc<Envelope>),
    /// Write this end frame (`unsubscribed` or `invalidated`, without id) on the channel's
    /// stream, then finish the stream.
    End(ChannelName, ServerFrame),
}

/// Where a channel's stream stands.
#[derive(Debug, PartialEq)]
enum State {
    /// Opened and not ended.
    Open,
    /// The `subscribed` reply went out, but the subscription had already ended when it did:
    /// the end frame that follows in the queue opens and ends the stream at once.
    Announced,
    /// The subscription was ended before its `subscribed` reply was queued (an invalidation
    /// racing the subscribe): the reply opens and ends the stream at once.
    EndedEarly(ServerFrame),
}

/// The demultiplexer of one connection.
#[derive(Debug, Default)]
pub(crate) struct Demux {
    /// Looked up once per message, so with a fast hasher; it holds the connection's
    /// subscriptions (at most `max_subscriptions`) and a few ending ones, too few for hash
    /// flooding to matter.
    channels: HashMap<ChannelName, State, BuildHasherDefault<FxHasher>>,
}

impl Demux {
    /// Whether `channel`'s stream is open, so that its messages route straight to it (as
    /// [`Demux::route`] would route them, without changing any state).
    pub(crate) fn is_open(&self, channel: &ChannelName) -> bool {
        self.channels.get(channel) == Some(&State::Open)
    }

    /// Routes one queue item. `subscribed` tells whether the connection holds a subscription to
    /// a channel right now; it is asked once per `subscribed` reply that finds no open stream.
    pub(crate) fn route(
        &mut self,
        item: Outbound,
        subscribed: impl Fn(&ChannelName) -> bool,
        out: &mut Vec<Route>,
    ) {
        let frame = match item {
            Outbound::Message(env) => {
                let channel = &env.message().channel;
                if self.channels.get(channel) != Some(&State::Open) {
                    self.channels.insert(channel.clone(), State::Open);
                    out.push(Route::Open(channel.clone()));
                }
                out.push(Route::Message(env));
                return;
            }
            Outbound::Frame(frame) => frame,
        };
        match &*frame {
            ServerFrame::Subscribed { channel, .. } => {
                let channel = channel.clone();
                out.push(Route::Control(frame));
                match self.channels.remove(&channel) {
                    Some(State::Open) => {
                        // A repeated subscribe: one subscription, one stream.
                        self.channels.insert(channel, State::Open);
                    }
                    Some(State::EndedEarly(end)) => {
                        out.push(Route::Open(channel.clone()));
                        out.push(Route::End(channel, end));
                    }
                    None | Some(State::Announced) => {
                        if subscribed(&channel) {
                            out.push(Route::Open(channel.clone()));
                            self.channels.insert(channel, State::Open);
                        } else {
                            self.channels.insert(channel, State::Announced);
                        }
                    }
                }
            }
            ServerFrame::Unsubscribed { channel, .. } => {
                let channel = channel.clone();
                out.push(Route::Control(frame));
                let end = ServerFrame::Unsubscribed {
                    id: None,
                    channel: channel.clone(),
                };
                // Unsubscribing from a channel without a stream ends nothing.
                self.end(channel, end, false, out);
            }
            ServerFrame::Invalidated { channel } => {
                let channel = channel.clone();
                self.end(channel, *frame, true, out);
            }
            _ => out.push(Route::Control(frame)),
        }
    }

    fn end(&mut self, channel: ChannelName, end: ServerFrame, early: bool, out: &mut Vec<Route>) {
        match self.channels.remove(&channel) {
            Some(State::Open) => out.push(Route::End(channel, end)),
            Some(State::Announced) => {
                out.push(Route::Open(channel.clone()));
                out.push(Route::End(channel, end));
            }
            Some(State::EndedEarly(first)) => {
                self.channels.insert(channel, State::EndedEarly(first));
            }
            None if early => {
                self.channels.insert(channel, State::EndedEarly(end));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use broker_core::{Message, MessageId, RegionName};
    use bytes::Bytes;

    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn subscribed(id: &str, channel: &str) -> Outbound {
        Outbound::Frame(Box::new(ServerFrame::Subscribed {
            id: Some(id.into()),
            channel: ch(channel),
        }))
    }

    fn unsubscribed(id: &str, channel: &str) -> Outbound {
        Outbound::Frame(Box::new(ServerFrame::Unsubscribed {
            id: Some(id.into()),
            channel: ch(channel),
        }))
    }

    fn invalidated(channel: &str) -> Outbound {
        Outbound::Frame(Box::new(ServerFrame::Invalidated {
            channel: ch(channel),
        }))
    }

    fn message(channel: &str, n: u8) -> Outbound {
        Outbound::Message(Arc::new(Envelope::new(Message {
            channel: ch(channel),
            data: Bytes::from(vec![b'0' + n]),
            id: MessageId::new(format!("m{n}")),
            origin: RegionName::default(),
        })))
    }

    /// Routes `items` and renders the routes compactly, e.g. `ctl:subscribed`, `open:tech`,
    /// `msg:tech:1`, `end:tech:invalidated`.
    fn run(demux: &mut Demux, items: Vec<Outbound>, subscribed_now: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for item in items {
            demux.route(item, |c| subscribed_now.contains(&c.as_str()), &mut out);
        }
        out.iter()
            .map(|r| match r {
                Route::Control(f) => format!("ctl:{}", kind(f)),
                Route::Open(c) => format!("open:{c}"),
                Route::Message(env) => format!(
                    "msg:{}:{}",
                    env.message().channel,
                    String::from_utf8_lossy(&env.message().data)
                ),
                Route::End(c, f) => {
                    assert!(
                        matches!(
                            f,
                            ServerFrame::Unsubscribed { id: None, .. }
                                | ServerFrame::Invalidated { .. }
                        ),
                        "end frames carry no id: {f:?}"
                    );
                    format!("end:{c}:{}", kind(f))
                }
            })
            .collect()
    }

    fn kind(f: &ServerFrame) -> &'static str {
        match f {
            ServerFrame::Subscribed { .. } => "subscribed",
            ServerFrame::Unsubscribed { .. } => "unsubscribed",
            ServerFrame::Invalidated { .. } => "invalidated",
            ServerFrame::Pong { .. } => "pong",
            _ => "other",
        }
    }

    #[test]
    fn each_subscription_gets_a_stream_from_reply_to_end() {
        let mut d = Demux::default();
        let routes = run(
            &mut d,
            vec![
                subscribed("1", "tech"),
                message("tech", 1),
                subscribed("2", "cars"),
                message("cars", 2),
                message("tech", 3),
                Outbound::Frame(Box::new(ServerFrame::Pong { id: None })),
                unsubscribed("3", "tech"),
                invalidated("cars"),
            ],
            &["tech", "cars"],
        );
        assert_eq!(
            routes,
            [
                "ctl:subscribed",
                "open:tech",
                "msg:tech:1",
                "ctl:subscribed",
                "open:cars",
                "msg:cars:2",
                "msg:tech:3",
                "ctl:pong",
                "ctl:unsubscribed",
                "end:tech:unsubscribed",
                "end:cars:invalidated",
            ]
        );
        assert!(d.channels.is_empty());
    }

    #[test]
    fn repeated_subscribes_share_one_stream_and_resubscribing_opens_a_new_one() {
        let mut d = Demux::default();
        let routes = run(
            &mut d,
            vec![
                subscribed("1", "tech"),
                subscribed("2", "tech"),
                message("tech", 1),
                unsubscribed("3", "tech"),
                subscribed("4", "tech"),
                message("tech", 2),
            ],
            &["tech"],
        );
        assert_eq!(
            routes,
            [
                "ctl:subscribed",
                "open:tech",
                "ctl:subscribed",
                "msg:tech:1",
                "ctl:unsubscribed",
                "end:tech:unsubscribed",
                "ctl:subscribed",
                "open:tech",
                "msg:tech:2",
            ]
        );
    }

    #[test]
    fn a_message_ahead_of_its_reply_opens_the_stream() {
        let mut d = Demux::default();
        let routes = run(
            &mut d,
            vec![
                message("tech", 1),
                subscribed("1", "tech"),
                message("tech", 2),
            ],
            &["tech"],
        );
        assert_eq!(
            routes,
            ["open:tech", "msg:tech:1", "ctl:subscribed", "msg:tech:2"]
        );
    }

    #[test]
    fn unsubscribing_from_a_channel_without_a_stream_opens_nothing() {
        let mut d = Demux::default();
        let routes = run(&mut d, vec![unsubscribed("1", "tech")], &[]);
        assert_eq!(routes, ["ctl:unsubscribed"]);
        assert!(d.channels.is_empty());
    }

    #[test]
    fn a_subscription_ended_before_its_reply_went_out_still_gets_a_stream_and_its_end() {
        // Subscribe then unsubscribe, both queued before the writer ran: the subscription is
        // already gone when the reply is routed.
        let mut d = Demux::default();
        let routes = run(
            &mut d,
            vec![subscribed("1", "tech"), unsubscribed("2", "tech")],
            &[],
        );
        assert_eq!(
            routes,
            [
                "ctl:subscribed",
                "ctl:unsubscribed",
                "open:tech",
                "end:tech:unsubscribed"
            ]
        );
        // An invalidation racing the subscribe: its notice is queued before the reply.
        let routes = run(
            &mut d,
            vec![invalidated("cars"), subscribed("3", "cars")],
            &[],
        );
        assert_eq!(
            routes,
            ["ctl:subscribed", "open:cars", "end:cars:invalidated"]
        );
        assert!(d.channels.is_empty());
    }

    #[test]
    fn a_repeated_subscribe_racing_an_invalidation_opens_no_orphan_stream() {
        let mut d = Demux::default();
        run(&mut d, vec![subscribed("1", "tech")], &["tech"]);
        let routes = run(
            &mut d,
            vec![invalidated("tech"), subscribed("2", "tech")],
            &[],
        );
        assert_eq!(routes, ["end:tech:invalidated", "ctl:subscribed"]);
        // A later real subscription gets its stream.
        let routes = run(&mut d, vec![subscribed("3", "tech")], &["tech"]);
        assert_eq!(routes, ["ctl:subscribed", "open:tech"]);
    }
}
