//! A TCP proxy in front of a backend, to inject the faults a network has from outside the
//! client: refused connections, connections cut by the other side, traffic that stalls.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything: no fault.
    None,
    /// The backend is unreachable: open connections are closed and new ones closed at once.
    Unreachable,
    /// The backend hangs: connections stay open, nothing is forwarded either way.
    Stall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    fault: Fault,
    /// Bumped by [`FaultProxy::cut`]: connections opened before end.
    generation: u64,
}

/// A TCP proxy on a free loopback port in front of `target`. Point the client under test at
/// [`FaultProxy::url`] instead of the backend, then inject faults with
/// [`FaultProxy::set`] and [`FaultProxy::cut`].
///
/// ```no_run
/// # async fn demo() {
/// use chassis::testing::{Fault, FaultProxy};
///
/// let proxy = FaultProxy::start("127.0.0.1:5672").await;
/// let url = proxy.url("amqp://guest:guest@127.0.0.1:5672/%2f");
/// // ... start the service with messaging.url = url ...
/// proxy.set(Fault::Unreachable); // the broker goes away
/// proxy.set(Fault::None); // and comes back
/// # let _ = url;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: String,
    state: Arc<watch::Sender<State>>,
}

impl FaultProxy {
    /// Starts a proxy forwarding to `target` (`host:port`).
    pub async fn start(target: impl Into<String>) -> Self {
        let target = target.into();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let (state, _) = watch::channel(State {
            fault: Fault::None,
            generation: 0,
        });
        let state = Arc::new(state);
        tokio::spawn(accept(listener, target.clone(), state.clone()));
        Self { addr, target, state }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` with the target's `host:port` replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        url.replacen(&self.target, &self.addr.to_string(), 1)
    }

    /// Sets the fault, applied to open connections and new ones alike.
    pub fn set(&self, fault: Fault) {
        self.state.send_modify(|state| state.fault = fault);
    }

    /// Closes every open connection, as a backend that restarts or a load balancer that drops
    /// idle connections does; new connections are forwarded as before.
    pub fn cut(&self) {
        self.state.send_modify(|state| state.generation += 1);
    }
}

async fn accept(listener: TcpListener, target: String, state: Arc<watch::Sender<State>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let watching = state.subscribe();
        let generation = watching.borrow().generation;
        if watching.borrow().fault == Fault::Unreachable {
            drop(client);
            continue;
        }
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(backend) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = backend.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (backend_read, backend_write) = backend.into_split();
            // Either direction ending closes both: the connection is gone.
            tokio::select! {
                () = pump(client_read, backend_write, watching.clone(), generation) => {}
                () = pump(backend_read, client_write, watching, generation) => {}
            }
        });
    }
}

/// Copies `from` to `to` while the fault lets it; returns when either side closes, the
/// connection is cut, or the backend becomes unreachable.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut state: watch::Receiver<State>, generation: u64) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let now = *state.borrow_and_update();
        if now.generation != generation || now.fault == Fault::Unreachable {
            return;
        }
        if now.fault == Fault::Stall {
            if state.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
