//! ttrpc, the small RPC protocol containerd speaks with its shims, on a unix stream socket.
//!
//! Every message is a frame: a 10-byte header (payload length u32 BE, stream id u32 BE, type
//! u8, flags u8) and a protobuf payload. A client opens a stream per call (odd ids, counting
//! up by two) with a `Request` frame naming the service and method; the server answers on the
//! same stream with one `Response` frame carrying either the reply or a google.rpc.Status.
//! Calls are independent: many can be in flight on one connection, answered in any order.
//! Only unary calls exist here (the shim API needs no streams).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Largest payload either side accepts, as in containerd.
pub const MAX_MESSAGE: usize = 4 << 20;
const HEADER: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// The envelope of a call.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The envelope of an answer: a status (absent or code 0 means success) and the reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

struct Frame {
    stream: u32,
    kind: u8,
    payload: Vec<u8>,
}

/// Reads one frame; None at a clean end of the connection (between frames).
async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let stream = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if length > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("ttrpc message of {length} bytes is larger than the {MAX_MESSAGE}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await?;
    Ok(Some(Frame { stream, kind: header[8], payload }))
}

fn encode_frame(stream: u32, kind: u8, payload: &[u8]) -> io::Result<Vec<u8>> {
    if payload.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ttrpc message of {} bytes is larger than the {MAX_MESSAGE}-byte limit", payload.len()),
        ));
    }
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&[kind, 0]);
    frame.extend_from_slice(payload);
    Ok(frame)
}

fn to_rpc_status(status: &tonic::Status) -> RpcStatus {
    RpcStatus { code: status.code() as i32, message: status.message().to_string(), details: vec![] }
}

fn from_rpc_status(status: RpcStatus) -> tonic::Status {
    tonic::Status::new(tonic::Code::from(status.code), status.message)
}

type Pending = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<Response>>>>>;

/// A client connection to one ttrpc server. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct Client {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    /// Calls waiting for their answer, by stream id; None once the connection is gone.
    pending: Pending,
    next_stream: Arc<AtomicU32>,
    service: &'static str,
}

/// Removes a call's entry when the caller stops waiting (a cancelled Wait, say).
struct Forget {
    pending: Pending,
    stream: u32,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(map) = self.pending.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            map.remove(&self.stream);
        }
    }
}

impl Client {
    /// Connects to the server on `socket`, calling methods of `service`
    /// (e.g. `containerd.task.v2.Task`).
    pub async fn connect(socket: &Path, service: &'static str) -> io::Result<Client> {
        let stream = UnixStream::connect(socket).await?;
        let (mut reader, writer) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let answers = pending.clone();
        tokio::spawn(async move {
            loop {
                match read_frame(&mut reader).await {
                    Ok(Some(frame)) if frame.kind == TYPE_RESPONSE => {
                        let Ok(response) = Response::decode(frame.payload.as_slice()) else {
                            tracing::warn!(stream = frame.stream, "undecodable ttrpc response dropped");
                            continue;
                        };
                        let waiter = answers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .as_mut()
                            .and_then(|m| m.remove(&frame.stream));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(response);
                        }
                    }
                    // Data frames belong to streaming calls, which nobody makes here.
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            // Dropping the senders tells every waiting call that the connection is gone.
            answers.lock().unwrap_or_else(|p| p.into_inner()).take();
        });
        Ok(Client {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            pending,
            next_stream: Arc::new(AtomicU32::new(1)),
            service,
        })
    }

    /// Whether the connection is still up (as far as the reader has seen).
    pub fn is_connected(&self) -> bool {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Calls `method` with `request`; waits at most `timeout` when given (the server is told too).
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, tonic::Status> {
        let stream = self.next_stream.fetch_add(2, Ordering::Relaxed);
        let envelope = Request {
            service: self.service.to_string(),
            method: method.to_string(),
            payload: request.encode_to_vec(),
            timeout_nano: timeout.map(|t| t.as_nanos().min(i64::MAX as u128) as i64).unwrap_or(0),
            metadata: vec![],
        };
        let frame = encode_frame(stream, TYPE_REQUEST, &envelope.encode_to_vec())
            .map_err(|e| tonic::Status::invalid_argument(format!("{method}: {e}")))?;
        let (answer, answered) = oneshot::channel();
        match self.pending.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(map) => map.insert(stream, answer),
            None => return Err(closed(method)),
        };
        let _forget = Forget { pending: self.pending.clone(), stream };
        self.writer
            .lock()
            .await
            .write_all(&frame)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{method}: writing to the shim: {e}")))?;
        let response = match timeout {
            Some(limit) => tokio::time::timeout(limit, answered)
                .await
                .map_err(|_| tonic::Status::deadline_exceeded(format!("{method}: no answer within {limit:?}")))?,
            None => answered.await,
        }
        .map_err(|_| closed(method))?;
        match response.status {
            Some(status) if status.code != 0 => Err(from_rpc_status(status)),
            _ => Resp::decode(response.payload.as_slice())
                .map_err(|e| tonic::Status::internal(format!("{method}: undecodable answer: {e}"))),
        }
    }
}

fn closed(method: &str) -> tonic::Status {
    tonic::Status::unavailable(format!("{method}: the shim connection closed"))
}

/// What a server answers a call with: the encoded reply, or an error status.
pub type Reply = Pin<Box<dyn Future<Output = Result<Vec<u8>, tonic::Status>> + Send>>;

/// Handles the calls a server receives.
pub trait Dispatch: Send + Sync + 'static {
    fn call(&self, service: &str, method: &str, payload: Vec<u8>) -> Reply;
}

/// Decodes a request payload, or the InvalidArgument status to answer with.
pub fn decode<T: Message + Default>(method: &str, payload: &[u8]) -> Result<T, tonic::Status> {
    T::decode(payload).map_err(|e| tonic::Status::invalid_argument(format!("{method}: undecodable request: {e}")))
}

/// Serves `dispatch` on every connection `listener` accepts, until the listener fails.
pub async fn serve(listener: UnixListener, dispatch: Arc<dyn Dispatch>) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve_connection(stream, dispatch.clone()));
    }
}

async fn serve_connection(stream: UnixStream, dispatch: Arc<dyn Dispatch>) {
    let (mut reader, mut writer) = stream.into_split();
    let (answers, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    let writing = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut calls = tokio::task::JoinSet::new();
    while let Ok(Some(frame)) = read_frame(&mut reader).await {
        while calls.try_join_next().is_some() {}
        if frame.kind != TYPE_REQUEST {
            continue;
        }
        let answers = answers.clone();
        let dispatch = dispatch.clone();
        calls.spawn(async move {
            let result = match Request::decode(frame.payload.as_slice()) {
                Ok(request) => {
                    let reply = dispatch.call(&request.service, &request.method, request.payload);
                    if request.timeout_nano > 0 {
                        let limit = Duration::from_nanos(request.timeout_nano as u64);
                        tokio::time::timeout(limit, reply).await.unwrap_or_else(|_| {
                            Err(tonic::Status::deadline_exceeded(format!(
                                "{} took longer than {limit:?}",
                                request.method
                            )))
                        })
                    } else {
                        reply.await
                    }
                }
                Err(e) => Err(tonic::Status::invalid_argument(format!("undecodable ttrpc request: {e}"))),
            };
            let response = match result {
                Ok(payload) => Response { status: None, payload },
                Err(status) => Response { status: Some(to_rpc_status(&status)), payload: vec![] },
            };
            let frame = encode_frame(frame.stream, TYPE_RESPONSE, &response.encode_to_vec()).unwrap_or_else(|e| {
                let status = tonic::Status::resource_exhausted(e.to_string());
                let response = Response { status: Some(to_rpc_status(&status)), payload: vec![] };
                encode_frame(frame.stream, TYPE_RESPONSE, &response.encode_to_vec()).unwrap_or_default()
            });
            let _ = answers.send(frame);
        });
    }
    // The client is gone: calls still running (a Wait, say) have nobody to answer.
    calls.abort_all();
    drop(answers);
    let _ = writing.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Dispatch for Echo {
        fn call(&self, service: &str, method: &str, payload: Vec<u8>) -> Reply {
            let service = service.to_string();
            let method = method.to_string();
            Box::pin(async move {
                match method.as_str() {
                    "Echo" => {
                        let kv: KeyValue = decode(&method, &payload)?;
                        Ok(KeyValue { key: service, value: kv.value }.encode_to_vec())
                    }
                    "Slow" => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok(KeyValue { key: "slow".into(), value: String::new() }.encode_to_vec())
                    }
                    other => Err(tonic::Status::not_found(format!("no method {other}"))),
                }
            })
        }
    }

    #[tokio::test]
    async fn calls_are_answered_concurrently_with_statuses_carried() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("t.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        let client = Client::connect(&socket, "test.v1.Echo").await.unwrap();

        let slow = {
            let client = client.clone();
            tokio::spawn(async move { client.call::<_, KeyValue>("Slow", &KeyValue::default(), None).await })
        };
        let started = std::time::Instant::now();
        let echoed: KeyValue =
            client.call("Echo", &KeyValue { key: String::new(), value: "hi".into() }, None).await.unwrap();
        assert_eq!((echoed.key.as_str(), echoed.value.as_str()), ("test.v1.Echo", "hi"));
        assert!(started.elapsed() < Duration::from_millis(150), "not queued behind the slow call");
        assert_eq!(slow.await.unwrap().unwrap().key, "slow");

        let err = client.call::<_, KeyValue>("Nope", &KeyValue::default(), None).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::NotFound, "no method Nope"));

        let err = client.call::<_, KeyValue>("Slow", &KeyValue::default(), Some(Duration::from_millis(20))).await;
        assert_eq!(err.unwrap_err().code(), tonic::Code::DeadlineExceeded);

        server.abort();
        let _ = server.await;
    }

    #[tokio::test]
    async fn a_closed_connection_fails_waiting_calls_as_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("t.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let accept = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(stream);
        });
        let client = Client::connect(&socket, "test.v1.Echo").await.unwrap();
        let err = client.call::<_, KeyValue>("Echo", &KeyValue::default(), None).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        accept.await.unwrap();
        assert!(!client.is_connected());
    }

    #[test]
    fn frames_have_containerds_header() {
        let frame = encode_frame(3, TYPE_REQUEST, b"abc").unwrap();
        assert_eq!(frame, [0, 0, 0, 3, 0, 0, 0, 3, 1, 0, b'a', b'b', b'c']);
        assert!(encode_frame(1, TYPE_REQUEST, &vec![0; MAX_MESSAGE + 1]).is_err());
    }
}
