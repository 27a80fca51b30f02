//! The cancel request: where and how a PostgreSQL cancel is sent
//! ([`Canceller`]), and the stream it is sent over ([`CancelStream`]),
//! waited on until the server closes it (see the [module docs](super)).

use super::*;
/// Where and how to send PostgreSQL cancel requests for connections made
/// from one [`Config`]. Cheap to clone (one `Arc`). Build it once, next to the
/// pool or the client.
///
/// A cancel request is bounded by [`timeout`](Self::timeout) (5 s by default)
/// and is finished only when the server has closed the cancel connection,
/// that is after the postmaster has signalled the backend (see the [module
/// docs](super)).
///
/// ```
/// use ctxcore_sql::postgres::Canceller;
/// let config: tokio_postgres::Config = "host=127.0.0.1 port=5432 user=postgres".parse().unwrap();
/// let cancel = Canceller::new(&config).timeout(std::time::Duration::from_secs(2));
/// # let _ = cancel;
/// ```
pub struct Canceller<T = NoTls> {
    inner: Arc<CancellerInner<T>>,
}

struct CancellerInner<T> {
    /// Every host of the config, with the name its TLS connection verifies.
    targets: Vec<(Target, String)>,
    tls: T,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Target {
    Tcp(String, u16),
    Ip(std::net::IpAddr, u16),
    Unix(PathBuf),
}

impl<T> Clone for Canceller<T> {
    fn clone(&self) -> Self {
        Canceller {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> fmt::Debug for Canceller<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canceller")
            .field("targets", &self.inner.targets)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Canceller<NoTls> {
    /// Cancel requests without TLS to the server of `config`: to each of its
    /// hosts (or `hostaddr`s) with its port (5432 if none), see
    /// [`with_tls`](Self::with_tls).
    ///
    /// ```
    /// let config: tokio_postgres::Config = "host=/var/run/postgresql user=postgres".parse().unwrap();
    /// let cancel = ctxcore_sql::postgres::Canceller::new(&config);
    /// # let _ = cancel;
    /// ```
    pub fn new(config: &Config) -> Self {
        Canceller::with_tls(config, NoTls)
    }
}

impl<T> Canceller<T>
where
    T: MakeTlsConnect<CancelStream> + Clone + Send + Sync + 'static,
    T::Stream: Send,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<CancelStream>>::Future: Send,
{
    /// Cancel requests through `tls` (the same connector the connections
    /// use) to the server of `config`.
    ///
    /// A config with several hosts (failover, `target_session_attrs`): the
    /// connection may be to any of them, and tokio-postgres does not say
    /// which, so each cancel request goes to **every** host, concurrently, and
    /// is finished when all have closed (or failed, or timed out). A cancel
    /// key that reaches a server other than the connection's matches no
    /// backend there and is ignored. An unreachable host (one that never
    /// refuses) delays each cancel up to [`timeout`](Self::timeout).
    ///
    /// ```
    /// use ctxcore_sql::postgres::Canceller;
    /// let config: tokio_postgres::Config = "host=db.internal user=app sslmode=require".parse().unwrap();
    /// // With a real TLS connector (e.g. postgres_native_tls::MakeTlsConnector) in place of NoTls.
    /// let cancel = Canceller::with_tls(&config, tokio_postgres::NoTls);
    /// # let _ = cancel;
    /// ```
    pub fn with_tls(config: &Config, tls: T) -> Self {
        // As tokio-postgres connects: host i (or hostaddr i) with port i, or
        // the one port for all, or 5432.
        let (hosts, addrs, ports) = (config.get_hosts(), config.get_hostaddrs(), config.get_ports());
        let mut targets = Vec::new();
        for i in 0..hosts.len().max(addrs.len()) {
            let port = match ports.len() {
                0 => 5432,
                1 => ports[0],
                _ => ports.get(i).copied().unwrap_or(5432),
            };
            let target = match (addrs.get(i), hosts.get(i)) {
                (Some(ip), host) => Some((
                    Target::Ip(*ip, port),
                    match host {
                        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                        _ => String::new(),
                    },
                )),
                (None, Some(tokio_postgres::config::Host::Tcp(h))) => Some((Target::Tcp(h.clone(), port), h.clone())),
                #[cfg(unix)]
                (None, Some(tokio_postgres::config::Host::Unix(dir))) => {
                    Some((Target::Unix(dir.join(format!(".s.PGSQL.{port}"))), String::new()))
                }
                _ => None,
            };
            targets.extend(target);
        }
        Canceller {
            inner: Arc::new(CancellerInner {
                targets,
                tls,
                timeout: DEFAULT_CANCEL_TIMEOUT,
            }),
        }
    }

    /// The bound on one cancel request (connect, send, and the server closing
    /// the connection). Default 5 s.
    ///
    /// ```
    /// let config: tokio_postgres::Config = "host=127.0.0.1 user=postgres".parse().unwrap();
    /// let cancel = ctxcore_sql::postgres::Canceller::new(&config).timeout(std::time::Duration::from_millis(500));
    /// # let _ = cancel;
    /// ```
    pub fn timeout(self, timeout: Duration) -> Self {
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.timeout = timeout;
                inner
            }
            Err(shared) => CancellerInner {
                targets: shared.targets.clone(),
                tls: shared.tls.clone(),
                timeout,
            },
        };
        Canceller { inner: Arc::new(inner) }
    }

    /// Sends a cancel request for the statement running on `token`'s
    /// connection, and returns once the server has acted on it (closed the
    /// cancel connection), or after the timeout. `Ok(())` means the request was
    /// delivered (to at least one host of a multi-host config, after every
    /// host has been tried to its end), not that a statement was cancelled.
    ///
    /// ```no_run
    /// # async fn demo(client: &tokio_postgres::Client, config: &tokio_postgres::Config) {
    /// let cancel = ctxcore_sql::postgres::Canceller::new(config);
    /// cancel.cancel(client.cancel_token()).await.unwrap();
    /// # }
    /// ```
    pub async fn cancel(&self, token: CancelToken) -> io::Result<()> {
        let (bound, _h) = Context::background().with_timeout(self.inner.timeout);
        let send = pin!(self.send(token));
        match first_of(send, bound.done()).await {
            Either::Left(r) => r,
            Either::Right(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "cancel request timed out")),
        }
    }

    async fn send(&self, token: CancelToken) -> io::Result<()> {
        let mut sends: Vec<_> = self
            .inner
            .targets
            .iter()
            .map(|(target, hostname)| Some(Box::pin(self.send_to(target, hostname, token.clone()))))
            .collect();
        if sends.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the config names no host"));
        }
        // All of them to their end: any may be the connection's server.
        let mut delivered = false;
        let mut first_err = None;
        poll_fn(|cx| {
            let mut pending = false;
            for slot in sends.iter_mut() {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        Poll::Ready(r) => {
                            *slot = None;
                            match r {
                                Ok(()) => delivered = true,
                                Err(e) => {
                                    first_err.get_or_insert(e);
                                }
                            }
                        }
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        match (delivered, first_err) {
            (true, _) | (false, None) => Ok(()),
            (false, Some(e)) => Err(e),
        }
    }

    async fn send_to(&self, target: &Target, hostname: &str, token: CancelToken) -> io::Result<()> {
        let stream = match target {
            Target::Tcp(host, port) => CancelStream::tcp(tokio::net::TcpStream::connect((host.as_str(), *port)).await?),
            Target::Ip(ip, port) => CancelStream::tcp(tokio::net::TcpStream::connect((*ip, *port)).await?),
            #[cfg(unix)]
            Target::Unix(path) => CancelStream::unix(tokio::net::UnixStream::connect(path).await?),
            #[cfg(not(unix))]
            Target::Unix(_) => return Err(io::Error::new(io::ErrorKind::Unsupported, "no Unix sockets here")),
        };
        let mut tls = self.inner.tls.clone();
        let connect = tls.make_tls_connect(hostname).map_err(|e| io::Error::other(e.into()))?;
        token.cancel_query_raw(stream, connect).await.map_err(io::Error::other)
    }
}

/// The stream a cancel request travels on (TCP or a Unix socket). Its
/// `poll_shutdown` shuts down the write half and then reads until the server
/// closes the connection, which the postmaster does only after signalling the
/// backend: that is how a [`Canceller`] knows the cancel has landed.
///
/// TLS connectors are given this type (`MakeTlsConnect<CancelStream>`).
///
/// ```
/// fn needs_tls_for_cancel<T: tokio_postgres::tls::MakeTlsConnect<ctxcore_sql::postgres::CancelStream>>(_: T) {}
/// needs_tls_for_cancel(tokio_postgres::NoTls);
/// ```
#[derive(Debug)]
pub struct CancelStream {
    inner: StreamInner,
    write_shut: bool,
}

#[derive(Debug)]
enum StreamInner {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl CancelStream {
    fn tcp(s: tokio::net::TcpStream) -> Self {
        let _ = s.set_nodelay(true);
        CancelStream {
            inner: StreamInner::Tcp(s),
            write_shut: false,
        }
    }

    #[cfg(unix)]
    fn unix(s: tokio::net::UnixStream) -> Self {
        CancelStream {
            inner: StreamInner::Unix(s),
            write_shut: false,
        }
    }
}

impl AsyncRead for CancelStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskCx<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            StreamInner::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for CancelStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskCx<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            StreamInner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            StreamInner::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            StreamInner::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_shut {
            let r = match &mut this.inner {
                StreamInner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                #[cfg(unix)]
                StreamInner::Unix(s) => Pin::new(s).poll_shutdown(cx),
            };
            match r {
                Poll::Ready(Ok(())) => this.write_shut = true,
                other => return other,
            }
        }
        // Read until the server closes its end: the postmaster child that
        // handles a cancel request closes the socket after signalling.
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            let r = match &mut this.inner {
                StreamInner::Tcp(s) => Pin::new(s).poll_read(cx, &mut buf),
                #[cfg(unix)]
                StreamInner::Unix(s) => Pin::new(s).poll_read(cx, &mut buf),
            };
            match r {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> Canceller<T> {
    /// The bound on one cancel request ([`timeout`](Self::timeout)).
    pub(super) fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }
}
