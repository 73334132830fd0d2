//! What a conformance test is, as data: the requests it sends, from which workload, and what
//! each answer must show. The upstream tests (`upstream.rs`) and Sluice's own fixtures
//! (`own.rs`) are both written in these terms, and `runner.rs` executes them.

use std::fmt;

/// A workload: the first (and only) pod of a Deployment in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub deployment: String,
}

impl PodRef {
    pub fn new(namespace: &str, deployment: &str) -> PodRef {
        PodRef {
            namespace: namespace.to_owned(),
            deployment: deployment.to_owned(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.deployment)
    }
}

/// How the request travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP/1.1 `GET`.
    Http,
    /// A unary gRPC call over h2c to `proto.EchoTestService/<method>`.
    Grpc { method: String },
}

/// Where the request is addressed (the URL's host), which is what the mesh routes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A host name with an optional `:port`, such as `echo`, `echo-v1:8080` or
    /// `echo-v1.gateway-conformance-mesh`.
    Name(String),
    /// A pod's own address at `port`, bypassing Services.
    PodAddress { pod: PodRef, port: u16 },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Name(name) => f.write_str(name),
            Target::PodAddress { pod, port } => write!(f, "<address of {pod}>:{port}"),
        }
    }
}

/// One request, as the upstream echo client would send it.
#[derive(Clone, Debug)]
pub struct Request {
    pub client: PodRef,
    pub scheme: Scheme,
    pub target: Target,
    /// Path and query, sent raw; empty means `/`.
    pub path: String,
    /// Extra headers (gRPC metadata), names as written. A header named `Host` replaces the
    /// Host header without changing where the request is addressed.
    pub headers: Vec<(String, String)>,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scheme {
            Scheme::Http => write!(f, "GET http://{}{}", self.target, self.path)?,
            Scheme::Grpc { method } => write!(
                f,
                "gRPC grpc://{}/proto.EchoTestService/{method}",
                self.target
            )?,
        }
        for (name, value) in &self.headers {
            write!(f, " [{name}: {value}]")?;
        }
        write!(f, " from {}", self.client)
    }
}

/// What a `Location` header must say, by the rules the Gateway-side harness applies (the mesh
/// harness does not check it; Sluice's runner does in strict mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedirectExpect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
}

/// The expectations of one case.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Accepted status codes; empty means {200}.
    pub status: Vec<u16>,
    /// The answering pod's hostname must start with this.
    pub backend: Option<String>,
    /// Headers the backend must have received: all values joined with `,`.
    pub request_headers: Vec<(String, String)>,
    pub absent_request_headers: Vec<String>,
    /// Response headers the client must see, last value compared exactly.
    pub response_headers: Vec<(String, String)>,
    pub absent_response_headers: Vec<String>,
    /// Strict only: the request target (path and query) the backend received.
    pub backend_path: Option<String>,
    /// Strict only: the Host (or `:authority`) the backend received.
    pub backend_host: Option<String>,
    /// Strict only: the redirect's `Location`.
    pub redirect: Option<RedirectExpect>,
}

/// One request and its expectations.
#[derive(Clone, Debug)]
pub struct Case {
    pub request: Request,
    pub expect: Expect,
}

/// Builds cases: `client.get("echo", "/v2").backend("echo-v2")`.
impl Case {
    pub fn http(client: &PodRef, host: &str, path: &str) -> Case {
        Case {
            request: Request {
                client: client.clone(),
                scheme: Scheme::Http,
                target: Target::Name(host.to_owned()),
                path: path.to_owned(),
                headers: Vec::new(),
            },
            expect: Expect::default(),
        }
    }

    pub fn grpc(client: &PodRef, host: &str, method: &str) -> Case {
        Case {
            request: Request {
                client: client.clone(),
                scheme: Scheme::Grpc {
                    method: method.to_owned(),
                },
                target: Target::Name(host.to_owned()),
                path: String::new(),
                headers: Vec::new(),
            },
            expect: Expect::default(),
        }
    }

    /// A request straight to `pod`'s address at `port`.
    pub fn at_pod(mut self, pod: &PodRef, port: u16) -> Case {
        self.request.target = Target::PodAddress {
            pod: pod.clone(),
            port,
        };
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Case {
        self.request
            .headers
            .push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn status(mut self, status: u16) -> Case {
        self.expect.status.push(status);
        self
    }

    pub fn backend(mut self, prefix: &str) -> Case {
        self.expect.backend = Some(prefix.to_owned());
        self
    }

    /// The backend must see `name` with exactly `value` (values joined with `,`).
    pub fn sees(mut self, name: &str, value: &str) -> Case {
        self.expect
            .request_headers
            .push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn not_sees(mut self, name: &str) -> Case {
        self.expect.absent_request_headers.push(name.to_owned());
        self
    }

    pub fn response_header(mut self, name: &str, value: &str) -> Case {
        self.expect
            .response_headers
            .push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn no_response_header(mut self, name: &str) -> Case {
        self.expect.absent_response_headers.push(name.to_owned());
        self
    }

    pub fn backend_path(mut self, path: &str) -> Case {
        self.expect.backend_path = Some(path.to_owned());
        self
    }

    pub fn backend_host(mut self, host: &str) -> Case {
        self.expect.backend_host = Some(host.to_owned());
        self
    }

    pub fn redirect(mut self, redirect: RedirectExpect) -> Case {
        self.expect.redirect = Some(redirect);
        self
    }
}

impl RedirectExpect {
    pub fn any() -> RedirectExpect {
        RedirectExpect::default()
    }

    pub fn scheme(mut self, scheme: &str) -> RedirectExpect {
        self.scheme = Some(scheme.to_owned());
        self
    }

    pub fn host(mut self, host: &str) -> RedirectExpect {
        self.host = Some(host.to_owned());
        self
    }

    pub fn port(mut self, port: u16) -> RedirectExpect {
        self.port = Some(port);
        self
    }

    pub fn path(mut self, path: &str) -> RedirectExpect {
        self.path = Some(path.to_owned());
        self
    }
}

/// A part of a test, run after the previous one.
#[derive(Clone, Debug)]
pub enum Step {
    /// Cases that each must converge (§0.5), concurrently or one after the other.
    Cases { parallel: bool, cases: Vec<Case> },
    /// The weighted-distribution check (§2) on `request`, with the expected share per backend
    /// (deployment name).
    Distribution {
        request: Request,
        shares: Vec<(String, f64)>,
    },
    /// `case` must converge, and a copy of its request must reach `mirror` (an HTTP pod).
    Mirror { case: Box<Case>, mirror: PodRef },
}

/// One conformance test: the manifests it applies and what it checks.
#[derive(Clone, Debug)]
pub struct ConformanceTest {
    /// The upstream short name (`MeshHTTPRouteWeight`) or the name of Sluice's own fixture.
    pub name: String,
    /// The features it needs; it runs only when Sluice supports all of them.
    pub features: Vec<&'static str>,
    /// Manifest files, relative to the suite's test folder.
    pub manifests: Vec<String>,
    pub steps: Vec<Step>,
}

impl ConformanceTest {
    pub fn new(name: &str, features: &[&'static str], manifests: &[&str]) -> ConformanceTest {
        ConformanceTest {
            name: name.to_owned(),
            features: features.to_vec(),
            manifests: manifests.iter().map(|m| (*m).to_owned()).collect(),
            steps: Vec::new(),
        }
    }

    pub fn in_order(mut self, cases: Vec<Case>) -> ConformanceTest {
        self.steps.push(Step::Cases {
            parallel: false,
            cases,
        });
        self
    }

    pub fn parallel(mut self, cases: Vec<Case>) -> ConformanceTest {
        self.steps.push(Step::Cases {
            parallel: true,
            cases,
        });
        self
    }

    pub fn distribution(mut self, request: Request, shares: &[(&str, f64)]) -> ConformanceTest {
        self.steps.push(Step::Distribution {
            request,
            shares: shares.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
        });
        self
    }

    pub fn mirror(mut self, case: Case, mirror: &PodRef) -> ConformanceTest {
        self.steps.push(Step::Mirror {
            case: Box::new(case),
            mirror: mirror.clone(),
        });
        self
    }
}
