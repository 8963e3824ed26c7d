//! A second baseline for queries: a unary RPC that does no work but answers with as many bytes
//! as a FindPrior answer, over the same kind of mTLS connection.
//!
//! The raw echo (the health `Check`) answers nothing, so it leaves out what any answer of a few
//! kilobytes costs in this process whoever computes it: encoding, TLS encryption and
//! decryption, HTTP/2 framing and the client's decoding. FindPrior set beside this echo shows
//! how much of a query's cost is the hub's own work.
//!
//! The service is a bench-only gRPC method, `/huren.bench.v1.Echo/Sized`, served by its own
//! tonic server with the hub's TLS identity: the request is a `google.protobuf.UInt32Value`
//! (the answer's size) and the answer a `google.protobuf.BytesValue` of that size.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::transport::{Channel, Server, ServerTlsConfig};
use tonic_prost::ProstCodec;

const SERVICE: &str = "huren.bench.v1.Echo";
const METHOD: &str = "/huren.bench.v1.Echo/Sized";

/// Largest answer served (the client asks for a FindPrior answer's size, a few kilobytes).
const MAX_ANSWER: u32 = 1 << 20;

/// The server side: every call on the service answers with the bytes asked for.
#[derive(Clone, Copy)]
struct SizedEcho;

impl tonic::server::NamedService for SizedEcho {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for SizedEcho
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Vec<u8>, u32>::default());
            Ok(grpc.unary(Answer, request).await)
        })
    }
}

struct Answer;

impl tonic::server::UnaryService<u32> for Answer {
    type Response = Vec<u8>;
    type Future = BoxFuture<tonic::Response<Vec<u8>>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<u32>) -> Self::Future {
        let size = *request.get_ref();
        Box::pin(async move {
            if size > MAX_ANSWER {
                return Err(tonic::Status::out_of_range(format!(
                    "an answer of {size} bytes was asked for; at most {MAX_ANSWER}"
                )));
            }
            Ok(tonic::Response::new(vec![0x5a; size as usize]))
        })
    }
}

/// Serves the sized echo on `listener` until `stop` resolves.
pub async fn serve(
    tls: ServerTlsConfig,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    // As the hub does: no Nagle delay on small answers.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.and_then(|stream| {
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    });
    Server::builder()
        .tls_config(tls)?
        .add_service(SizedEcho)
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}

/// One call: asks for an answer of `size` bytes and checks that it came.
pub async fn call(channel: Channel, size: u32) -> anyhow::Result<()> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let answer: tonic::Response<Vec<u8>> = grpc
        .unary(
            tonic::Request::new(size),
            http::uri::PathAndQuery::from_static(METHOD),
            ProstCodec::<u32, Vec<u8>>::default(),
        )
        .await?;
    anyhow::ensure!(
        answer.get_ref().len() == size as usize,
        "asked for {size} bytes, got {}",
        answer.get_ref().len()
    );
    Ok(())
}
