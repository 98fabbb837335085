//! Moves one channel between the client and the target, through the recorder.
//!
//! Each direction runs as its own future, so a full window one way never stalls the
//! other. Writes wait for the peer's SSH window (russh `ChannelWriteHalf`), and reads
//! come from russh's bounded per-channel queues, so a slow reader stops the gateway from
//! reading the fast side instead of making it buffer: memory per channel is bounded.
//! Every byte is handed to the recorder before it is forwarded; a recorder error ends
//! the session (fail closed).

use std::sync::Arc;

use russh::{server, Channel, ChannelMsg};
use session_recordings::{ChannelKind, DataDirection, Meta, RecordError};

use crate::policy::Request;
use crate::session::TargetSession;

type FrontChannel = Channel<server::Msg>;
type UpChannel = Channel<russh::client::Msg>;

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("recording failed: {0}")]
    Record(#[from] RecordError),
    #[error("channel error: {0}")]
    Ssh(#[from] russh::Error),
}

/// How a request on a session channel is judged; the front handler uses the same
/// function to answer the client, so the reply and the relay always agree.
pub fn judge(s: &TargetSession, msg: &ChannelMsg) -> Option<Result<(), String>> {
    let a = s.authorized();
    match msg {
        ChannelMsg::RequestShell { .. } => Some(a.check(&Request::Shell)),
        ChannelMsg::Exec { command, .. } => Some(a.check(&Request::Exec(&String::from_utf8_lossy(command)))),
        ChannelMsg::RequestSubsystem { name, .. } => Some(a.check(&Request::Subsystem(name))),
        ChannelMsg::RequestPty { .. } => Some(
            a.check(&Request::Shell)
                .or_else(|_| a.check(&Request::Exec("")))
                .map_err(|_| "a terminal is not allowed for this role".to_owned()),
        ),
        ChannelMsg::RequestX11 { .. } => Some(Err("X11 forwarding is not allowed".to_owned())),
        ChannelMsg::AgentForward { .. } => Some(Err("agent forwarding is not allowed".to_owned())),
        _ => None,
    }
}

/// Relay a session channel opened by the client.
pub async fn session_channel(
    s: Arc<TargetSession>,
    front: FrontChannel,
    front_handle: server::Handle,
    env_allowed: impl Fn(&str) -> bool + Send + Sync,
) {
    let id = u32::from(front.id());
    let up = match s.upstream().channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            let _ = front
                .extended_data_bytes(
                    1,
                    format!(
                        "herse: cannot open a channel on {}: {e}\r\n",
                        s.authorized().target().name
                    ),
                )
                .await;
            let _ = front.exit_status(1).await;
            let _ = front.close().await;
            return;
        }
    };
    run(s, id, ChannelKind::Session, front, up, front_handle, &env_allowed).await;
}

/// Relay a `direct-tcpip` channel (port forwarding) that policy already allowed.
pub async fn forward_channel(
    s: Arc<TargetSession>,
    front: FrontChannel,
    front_handle: server::Handle,
    host: String,
    port: u32,
    orig: (String, u32),
) {
    let id = u32::from(front.id());
    let up = match s
        .upstream()
        .channel_open_direct_tcpip(host.clone(), port, orig.0, orig.1)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(session = %s.id(), error = %e, "target refused port forward");
            let _ = front.close().await;
            return;
        }
    };
    run(
        s,
        id,
        ChannelKind::DirectTcpip { host, port },
        front,
        up,
        front_handle,
        &|_| false,
    )
    .await;
}

async fn run(
    s: Arc<TargetSession>,
    id: u32,
    kind: ChannelKind,
    front: FrontChannel,
    up: UpChannel,
    front_handle: server::Handle,
    env_allowed: &(dyn Fn(&str) -> bool + Send + Sync),
) {
    if let Err(e) = s.recorder().meta(id, &Meta::ChannelOpen { kind }) {
        s.end(format!("recording failed: {e}"));
        return;
    }
    let (mut front_rx, front_tx) = front.split();
    let (mut up_rx, up_tx) = up.split();

    let inbound = async {
        while let Some(msg) = front_rx.wait().await {
            match client_to_target(&s, id, msg, &up_tx, &front_tx, env_allowed).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(e),
            }
        }
        let _ = up_tx.close().await;
        Ok::<(), RelayError>(())
    };
    let outbound = async {
        while let Some(msg) = up_rx.wait().await {
            if !target_to_client(&s, id, msg, &front_tx, &front_handle).await? {
                break;
            }
        }
        let _ = front_tx.close().await;
        Ok::<(), RelayError>(())
    };
    let both = async { tokio::try_join!(inbound, outbound) };
    tokio::select! {
        r = both => {
            if let Err(e) = r {
                s.end(e.to_string());
            }
        }
        _ = s.cancelled() => {}
    }
    let _ = s.recorder().meta(id, &Meta::Close);
}

/// Forward one message from the client. `Ok(false)` ends this direction.
async fn client_to_target(
    s: &TargetSession,
    id: u32,
    msg: ChannelMsg,
    up: &russh::ChannelWriteHalf<russh::client::Msg>,
    front: &russh::ChannelWriteHalf<server::Msg>,
    env_allowed: &(dyn Fn(&str) -> bool + Send + Sync),
) -> Result<bool, RelayError> {
    let rec = s.recorder();
    if let Some(Err(reason)) = judge(s, &msg) {
        let request = request_name(&msg);
        rec.meta(
            id,
            &Meta::Denied {
                request: request.clone(),
                reason: reason.clone(),
            },
        )?;
        tracing::info!(session = %s.id(), request, reason, "request denied");
        s.audit_denied(&request, &reason).await;
        if matches!(
            msg,
            ChannelMsg::RequestShell { .. } | ChannelMsg::Exec { .. } | ChannelMsg::RequestSubsystem { .. }
        ) {
            let _ = front.extended_data_bytes(1, format!("herse: {reason}\r\n")).await;
            let _ = front.exit_status(1).await;
            let _ = front.eof().await;
            let _ = front.close().await;
            return Ok(false);
        }
        return Ok(true);
    }
    match msg {
        ChannelMsg::Data { data } => {
            s.touch();
            rec.data(id, DataDirection::Input, &data)?;
            up.data_bytes(data).await?;
        }
        ChannelMsg::ExtendedData { data, ext } => {
            s.touch();
            rec.data(id, DataDirection::Input, &data)?;
            up.extended_data_bytes(ext, data).await?;
        }
        ChannelMsg::Eof => {
            rec.meta(id, &Meta::Eof { from_client: true })?;
            up.eof().await?;
        }
        ChannelMsg::Close => return Ok(false),
        ChannelMsg::RequestPty {
            term,
            col_width,
            row_height,
            pix_width,
            pix_height,
            terminal_modes,
            ..
        } => {
            rec.meta(
                id,
                &Meta::Pty {
                    term: term.clone(),
                    cols: col_width,
                    rows: row_height,
                },
            )?;
            up.request_pty(
                false,
                &term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                &terminal_modes,
            )
            .await?;
        }
        ChannelMsg::RequestShell { .. } => {
            rec.meta(id, &Meta::Shell)?;
            up.request_shell(false).await?;
        }
        ChannelMsg::Exec { command, .. } => {
            rec.meta(
                id,
                &Meta::Exec {
                    command: String::from_utf8_lossy(&command).into_owned(),
                },
            )?;
            up.exec(false, command).await?;
        }
        ChannelMsg::RequestSubsystem { name, .. } => {
            rec.meta(id, &Meta::Subsystem { name: name.clone() })?;
            up.request_subsystem(false, name).await?;
        }
        ChannelMsg::SetEnv {
            variable_name,
            variable_value,
            ..
        } if env_allowed(&variable_name) => {
            rec.meta(
                id,
                &Meta::Env {
                    name: variable_name.clone(),
                    value: variable_value.clone(),
                },
            )?;
            up.set_env(false, variable_name, variable_value).await?;
        }
        ChannelMsg::WindowChange {
            col_width,
            row_height,
            pix_width,
            pix_height,
        } => {
            rec.meta(
                id,
                &Meta::Resize {
                    cols: col_width,
                    rows: row_height,
                },
            )?;
            up.window_change(col_width, row_height, pix_width, pix_height).await?;
        }
        ChannelMsg::Signal { signal } => {
            rec.meta(
                id,
                &Meta::Signal {
                    name: format!("{signal:?}"),
                },
            )?;
            up.signal(signal).await?;
        }
        _ => {}
    }
    Ok(true)
}

/// Forward one message from the target. `Ok(false)` ends this direction.
async fn target_to_client(
    s: &TargetSession,
    id: u32,
    msg: ChannelMsg,
    front: &russh::ChannelWriteHalf<server::Msg>,
    front_handle: &server::Handle,
) -> Result<bool, RelayError> {
    let rec = s.recorder();
    match msg {
        ChannelMsg::Data { data } => {
            s.touch();
            rec.data(id, DataDirection::Output, &data)?;
            front.data_bytes(data).await?;
        }
        ChannelMsg::ExtendedData { data, ext } => {
            s.touch();
            rec.data(id, DataDirection::Stderr, &data)?;
            front.extended_data_bytes(ext, data).await?;
        }
        ChannelMsg::Eof => {
            rec.meta(id, &Meta::Eof { from_client: false })?;
            front.eof().await?;
        }
        ChannelMsg::ExitStatus { exit_status } => {
            rec.meta(id, &Meta::ExitStatus { code: exit_status })?;
            front.exit_status(exit_status).await?;
        }
        ChannelMsg::ExitSignal {
            signal_name,
            core_dumped,
            error_message,
            lang_tag,
        } => {
            rec.meta(
                id,
                &Meta::ExitSignal {
                    signal: format!("{signal_name:?}"),
                    core_dumped,
                },
            )?;
            let _ = front_handle
                .exit_signal_request(front.id(), signal_name, core_dumped, error_message, lang_tag)
                .await;
        }
        ChannelMsg::Close => return Ok(false),
        _ => {}
    }
    Ok(true)
}

fn request_name(msg: &ChannelMsg) -> String {
    match msg {
        ChannelMsg::RequestShell { .. } => "shell".into(),
        ChannelMsg::Exec { command, .. } => format!("exec {}", String::from_utf8_lossy(command)),
        ChannelMsg::RequestSubsystem { name, .. } => format!("subsystem {name}"),
        ChannelMsg::RequestPty { .. } => "pty".into(),
        ChannelMsg::RequestX11 { .. } => "x11".into(),
        ChannelMsg::AgentForward { .. } => "agent forwarding".into(),
        other => format!("{other:?}"),
    }
}
