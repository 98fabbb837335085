use tokio::sync::mpsc::Sender;

use std::sync::Arc;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::Notify;

use super::{ReceiveFlow, WindowSizeRef};
use crate::ChannelMsg;

/// A handle to the [`super::Channel`]'s to be able to transmit messages
/// to it and update it's `window_size`.
#[derive(Debug)]
pub struct ChannelRef {
    pub(super) sender: Sender<ChannelMsg>,
    pub(super) window_size: WindowSizeRef,
    pub(super) flow: Arc<ReceiveFlow>,
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self {
            sender,
            window_size: WindowSizeRef::new(0),
            flow: Arc::default(),
        }
    }

    /// Queues a data message of `len` bytes for the application, counted in the flow.
    /// Returns whether it reached the queue. Within a window the queue has room for
    /// any peer whose packets are not tiny; otherwise this waits for room, as russh
    /// always did.
    pub(crate) async fn deliver_data(&self, msg: ChannelMsg, len: usize, wake: &Arc<Notify>) -> bool {
        self.flow.delivering(len, wake);
        let sent = match self.sender.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(msg)) => self.sender.send(msg).await.is_ok(),
            Err(TrySendError::Closed(_)) => false,
        };
        if !sent {
            self.flow.undeliver(len);
        }
        sent
    }

    /// The flow control shared with the channel's read half.
    pub(crate) fn flow(&self) -> &Arc<ReceiveFlow> {
        &self.flow
    }

    pub(crate) fn window_size(&self) -> &WindowSizeRef {
        &self.window_size
    }
}

impl std::ops::Deref for ChannelRef {
    type Target = Sender<ChannelMsg>;

    fn deref(&self) -> &Self::Target {
        &self.sender
    }
}
