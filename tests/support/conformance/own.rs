//! Sluice's own conformance fixtures (tests/fixtures/conformance): the features the upstream
//! mesh suite exercises, and a few it does not (RequestMirror, URLRewrite of the hostname,
//! ResponseHeaderModifier add and remove, backend-level response headers, GRPCRoute method
//! matches, redirect `Location`s), on a topology of their own, so that coverage never depends
//! on the upstream folder being present. They always run in strict mode.

use super::model::{Case, ConformanceTest, PodRef, RedirectExpect};

/// The producer namespace of the fixtures.
pub const MESH: &str = "sluice-mesh";
/// The client namespace of the fixtures.
pub const CLIENTS: &str = "sluice-mesh-client";

fn v1() -> PodRef {
    PodRef::new(MESH, "web-v1")
}

fn v2() -> PodRef {
    PodRef::new(MESH, "web-v2")
}

fn shell() -> PodRef {
    PodRef::new(CLIENTS, "shell")
}

/// A GET from web-v1 to `http://web{path}`.
fn get(path: &str) -> Case {
    Case::http(&v1(), "web", path)
}

pub fn tests() -> Vec<ConformanceTest> {
    vec![
        ConformanceTest::new("SluiceServiceDefaults", &["Mesh"], &[]).parallel(vec![
            get("/").backend("web-"),
            Case::http(&v1(), "web:8080", "/admin").backend("web-"),
            Case::http(&v1(), "web-v2", "/").backend("web-v2"),
            Case::http(&shell(), "web-v1.sluice-mesh.svc.cluster.local:8080", "/")
                .backend("web-v1"),
            Case::grpc(&shell(), "web.sluice-mesh:7070", "Echo").backend("web-"),
            Case::http(&shell(), "web", "/").status(404),
            Case::http(&v1(), "web:9999", "/").status(404),
        ]),
        ConformanceTest::new(
            "SluiceHeaderModifiers",
            &[
                "Mesh",
                "HTTPRoute",
                "HTTPRouteResponseHeaderModification",
                "MeshHTTPRouteBackendRequestHeaderModification",
            ],
            &["header-modifiers.yaml"],
        )
        .parallel(vec![
            get("/rule/a")
                .header("X-Team", "old")
                .header("X-Trace", "client")
                .header("X-Debug", "1")
                .header("X-Kept", "yes")
                .backend("web-v1")
                .sees("x-team", "payments")
                .sees("x-trace", "client,mesh")
                .sees("x-kept", "yes")
                .not_sees("x-debug")
                .response_header("x-served-by", "sluice")
                .response_header("cache-control", "no-store")
                .no_response_header("x-pod"),
            get("/backend/b")
                .header("x-team", "old")
                .header("x-trace", "client")
                .header("x-debug", "1")
                .backend("web-v2")
                .sees("X-Team", "search")
                .sees("X-Trace", "client,backend")
                .not_sees("X-Debug")
                .response_header("X-Backend", "v2")
                .no_response_header("X-Pod"),
        ]),
        ConformanceTest::new(
            "SluiceRedirects",
            &[
                "Mesh",
                "HTTPRoute",
                "MeshHTTPRouteSchemeRedirect",
                "MeshHTTPRouteRedirectPort",
                "MeshHTTPRouteRedirectPath",
                "HTTPRoute303RedirectStatusCode",
                "HTTPRoute307RedirectStatusCode",
                "HTTPRoute308RedirectStatusCode",
            ],
            &["redirects.yaml"],
        )
        .parallel(vec![
            get("/to-https/x")
                .status(301)
                .redirect(RedirectExpect::any().scheme("https").host("web")),
            get("/moved/anything").status(308).redirect(
                RedirectExpect::any()
                    .host("docs.example.com")
                    .port(8443)
                    .path("/handbook"),
            ),
            get("/old-api/users/7")
                .status(307)
                .redirect(RedirectExpect::any().host("web").path("/api/v2/users/7")),
            get("/see-other")
                .status(303)
                .redirect(RedirectExpect::any().host("web-v2")),
            get("/found/deep/path")
                .status(302)
                .redirect(RedirectExpect::any().host("web").path("/deep/path")),
            get("/found")
                .status(302)
                .redirect(RedirectExpect::any().host("web").path("/")),
        ]),
        ConformanceTest::new(
            "SluiceRewrites",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteRewritePath"],
            &["rewrites.yaml"],
        )
        .parallel(vec![
            get("/shop/cart?id=7")
                .backend("web-v1")
                .backend_path("/store/cart?id=7")
                .backend_host("catalog.internal"),
            get("/legacy/a/b").backend("web-v1").backend_path("/modern"),
            get("/strip/x/y").backend("web-v2").backend_path("/x/y"),
            get("/strip").backend("web-v2").backend_path("/"),
        ]),
        ConformanceTest::new("SluiceMirror", &["Mesh", "HTTPRoute"], &["mirror.yaml"]).mirror(
            Case::http(&shell(), "web-v1.sluice-mesh", "/mirrored/orders")
                .backend("web-v1")
                .backend_path("/mirrored/orders"),
            &v2(),
        ),
        ConformanceTest::new(
            "SluiceMatching",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteQueryParamMatching"],
            &["matching.yaml"],
        )
        .parallel(vec![
            get("/exact").backend("web-v2"),
            get("/exact/more").backend("web-v1"),
            get("/exactly").status(404),
            get("/items/42").backend("web-v2"),
            get("/items/abc").backend("web-v1"),
            get("/method").backend("web-v2"),
            get("/tier").backend("web-v1"),
            get("/tier").header("X-Tier", "gold").backend("web-v2"),
            get("/tier").header("X-Tier", "bronze").backend("web-v1"),
            get("/search?sort=asc&page=3").backend("web-v2"),
            get("/search?page=3&sort=asc&q=x").backend("web-v2"),
            get("/search?sort=asc&page=three").backend("web-v1"),
            get("/search?sort=desc&page=3").backend("web-v1"),
            get("/nowhere").status(404),
        ]),
        ConformanceTest::new(
            "SluiceNamedRules",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteNamedRouteRule"],
            &["named-rules.yaml"],
        )
        .parallel(vec![
            get("/orders/1").backend("web-v1"),
            get("/invoices/1").backend("web-v2"),
            get("/other").backend("web-v1"),
        ]),
        ConformanceTest::new(
            "SluiceParentRefPorts",
            &[
                "Mesh",
                "HTTPRoute",
                "HTTPRouteParentRefPort",
                "HTTPRouteResponseHeaderModification",
            ],
            &["ports.yaml"],
        )
        .in_order(vec![
            Case::http(&v2(), "web-v1:8080", "/")
                .backend("web-v1")
                .response_header("X-Attached", "port-8080"),
            Case::http(&v2(), "web-v1", "/")
                .backend("web-v1")
                .no_response_header("X-Attached"),
            Case::http(&v2(), "web-v2", "/")
                .backend("web-v2")
                .response_header("X-Attached", "all-ports"),
            Case::http(&v2(), "web-v2:8080", "/")
                .backend("web-v2")
                .response_header("X-Attached", "all-ports"),
        ]),
        ConformanceTest::new(
            "SluiceConsumerRoutes",
            &[
                "Mesh",
                "HTTPRoute",
                "MeshConsumerRoute",
                "HTTPRouteResponseHeaderModification",
            ],
            &["consumer.yaml"],
        )
        .in_order(vec![
            Case::http(&shell(), "web-v2.sluice-mesh", "/")
                .backend("web-v1")
                .response_header("X-Route", "consumer"),
            Case::http(&shell(), "web-v2.sluice-mesh.svc.cluster.local:80", "/")
                .backend("web-v1")
                .response_header("X-Route", "consumer"),
            Case::http(&shell(), "web-v2", "/").status(404),
            Case::http(&v1(), "web-v2", "/")
                .backend("web-v2")
                .response_header("X-Route", "producer"),
            Case::http(&v1(), "web-v2.sluice-mesh.svc", "/")
                .backend("web-v2")
                .response_header("X-Route", "producer"),
            Case::http(&shell(), "web-v1.sluice-mesh", "/")
                .backend("web-v1")
                .no_response_header("X-Route"),
        ]),
        ConformanceTest::new(
            "SluiceFrontend",
            &[
                "Mesh",
                "HTTPRoute",
                "MeshClusterIPMatching",
                "HTTPRouteResponseHeaderModification",
            ],
            &["frontend.yaml"],
        )
        .in_order(vec![
            Case::http(&shell(), "web-v1.sluice-mesh", "/")
                .backend("web-v2")
                .response_header("X-Route", "takeover"),
            Case::http(&shell(), "", "/direct")
                .at_pod(&v1(), 8080)
                .backend("web-v1")
                .backend_path("/direct")
                .no_response_header("X-Route"),
            Case::http(&shell(), "web-v1.sluice-mesh", "/")
                .header("Host", "web-v2.sluice-mesh")
                .backend("web-v2")
                .response_header("X-Route", "takeover"),
            Case::http(&shell(), "web-v2.sluice-mesh", "/")
                .header("Host", "web-v1.sluice-mesh")
                .backend("web-v2")
                .no_response_header("X-Route"),
            Case::grpc(&shell(), "", "Echo")
                .at_pod(&v1(), 7070)
                .backend("web-v1"),
        ]),
        ConformanceTest::new(
            "SluiceHTTPRouteWeights",
            &["Mesh", "HTTPRoute"],
            &["weights.yaml"],
        )
        .in_order(vec![get("/"), get("/drained").status(500)])
        .distribution(get("/").request, &[("web-v1", 0.25), ("web-v2", 0.75)]),
        ConformanceTest::new("SluiceGRPCRoute", &["Mesh", "GRPCRoute"], &["grpc.yaml"]).parallel(
            vec![
                Case::grpc(&v1(), "web:7070", "Ping")
                    .backend("web-v2")
                    .response_header("X-Method", "ping"),
                Case::grpc(&v1(), "web:7070", "Echo")
                    .header("x-canary", "yes")
                    .header("x-trace", "client")
                    .header("x-drop", "1")
                    .backend("web-v2")
                    .sees("x-canary-seen", "true")
                    .sees("x-trace", "client,grpc")
                    .not_sees("x-drop")
                    .backend_host("web:7070"),
                Case::grpc(&shell(), "web.sluice-mesh:7070", "Echo")
                    .backend("web-v1")
                    .no_response_header("X-Method"),
            ],
        ),
        ConformanceTest::new(
            "SluiceGRPCRouteWeights",
            &["Mesh", "GRPCRoute"],
            &["grpc-weights.yaml"],
        )
        .in_order(vec![Case::grpc(&v1(), "web:7070", "Echo")])
        .distribution(
            Case::grpc(&v1(), "web:7070", "Echo").request,
            &[("web-v1", 0.4), ("web-v2", 0.6)],
        ),
    ]
}
