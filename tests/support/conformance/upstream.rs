//! The upstream Gateway API mesh conformance tests, as EXPECTATIONS.md restates them: for each
//! test, its upstream short name, features, manifest file and cases. The manifests themselves
//! are read from the upstream folder at run time; none is copied here.

use super::model::{Case, ConformanceTest, PodRef, RedirectExpect};

/// The producer namespace of the upstream fixture.
pub const MESH: &str = "gateway-conformance-mesh";
/// The consumer namespace of the upstream fixture.
pub const CONSUMER: &str = "gateway-conformance-mesh-consumer";

fn v1() -> PodRef {
    PodRef::new(MESH, "echo-v1")
}

fn v2() -> PodRef {
    PodRef::new(MESH, "echo-v2")
}

/// A GET from echo-v1 in the mesh namespace to `http://echo{path}`.
fn get(path: &str) -> Case {
    Case::http(&v1(), "echo", path)
}

/// Every upstream mesh test, in the order the upstream suite lists them.
pub fn tests() -> Vec<ConformanceTest> {
    vec![
        // 1.1
        ConformanceTest::new("MeshBasic", &["Mesh"], &[]).in_order(vec![get("")]),
        // 1.2
        ConformanceTest::new(
            "MeshHTTPRouteSimpleSameNamespace",
            &["Mesh", "HTTPRoute"],
            &["httproute-simple-same-namespace.yaml"],
        )
        .in_order(vec![get("/").backend("echo-v1")]),
        // 1.3
        ConformanceTest::new(
            "MeshTrafficSplit",
            &["Mesh", "HTTPRoute"],
            &["mesh-split.yaml"],
        )
        .in_order(vec![
            get("/v1").backend("echo-v1"),
            get("/v2").backend("echo-v2"),
        ]),
        // 1.4
        ConformanceTest::new(
            "MeshPorts",
            &[
                "Mesh",
                "HTTPRoute",
                "HTTPRouteParentRefPort",
                "HTTPRouteResponseHeaderModification",
            ],
            &["mesh-ports.yaml"],
        )
        .in_order(vec![
            Case::http(&v1(), "echo-v1", "")
                .backend("echo-v1")
                .response_header("X-Header-Set", "v1"),
            Case::http(&v1(), "echo-v1:8080", "")
                .backend("echo-v1")
                .no_response_header("X-Header-Set"),
            Case::http(&v1(), "echo-v2", "")
                .backend("echo-v2")
                .response_header("X-Header-Set", "v2"),
            Case::http(&v1(), "echo-v2:8080", "")
                .backend("echo-v2")
                .response_header("X-Header-Set", "v2"),
        ]),
        // 1.5
        ConformanceTest::new(
            "MeshFrontend",
            &["Mesh", "HTTPRoute", "HTTPRouteResponseHeaderModification"],
            &["mesh-frontend.yaml"],
        )
        .in_order(vec![
            Case::http(&v1(), "echo-v2", "")
                .backend("echo-v2")
                .response_header("X-Header-Set", "set"),
            Case::http(&v1(), "", "")
                .at_pod(&v2(), 8080)
                .backend("echo-v2")
                .no_response_header("X-Header-Set"),
        ]),
        // 1.6
        ConformanceTest::new(
            "MeshFrontendHostname",
            &[
                "Mesh",
                "MeshClusterIPMatching",
                "HTTPRoute",
                "HTTPRouteResponseHeaderModification",
            ],
            &["mesh-frontend.yaml"],
        )
        .in_order(vec![
            Case::http(&v1(), "echo-v2", "")
                .header("Host", "echo-v1")
                .backend("echo-v2")
                .response_header("X-Header-Set", "set"),
            Case::http(&v1(), "echo-v1", "")
                .header("Host", "echo-v2")
                .backend("echo-v1")
                .no_response_header("X-Header-Set"),
        ]),
        // 1.7
        ConformanceTest::new(
            "MeshConsumerRoute",
            &[
                "Mesh",
                "MeshConsumerRoute",
                "HTTPRoute",
                "HTTPRouteResponseHeaderModification",
            ],
            &["mesh-consumer-route.yaml"],
        )
        .in_order(vec![
            Case::http(
                &PodRef::new(CONSUMER, "echo-v1"),
                "echo-v1.gateway-conformance-mesh",
                "/",
            )
            .backend("echo-v1")
            .response_header("X-Header-Set", "set"),
            Case::http(&v1(), "echo-v1.gateway-conformance-mesh", "/")
                .backend("echo-v1")
                .no_response_header("X-Header-Set"),
        ]),
        // 1.8
        ConformanceTest::new(
            "MeshHTTPRouteMatching",
            &["Mesh", "HTTPRoute"],
            &["httproute-matching.yaml"],
        )
        .parallel(vec![
            get("/").backend("echo-v1"),
            get("/example").backend("echo-v1"),
            get("/").header("Version", "one").backend("echo-v1"),
            get("/v2").backend("echo-v2"),
            get("/v2/example").backend("echo-v2"),
            get("/").header("Version", "two").backend("echo-v2"),
            get("/v2/").backend("echo-v2"),
            get("/v2example").backend("echo-v1"),
            get("/foo/v2/example").backend("echo-v1"),
        ]),
        // 1.9
        ConformanceTest::new(
            "MeshHTTPRouteQueryParamMatching",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteQueryParamMatching"],
            &["httproute-query-param-matching.yaml"],
        )
        .parallel(vec![
            get("/?animal=whale").backend("echo-v1"),
            get("/?animal=dolphin").backend("echo-v2"),
            get("/?animal=whale&otherparam=irrelevant").backend("echo-v1"),
            get("/?animal=dolphin&color=yellow").backend("echo-v2"),
            get("/?color=blue").status(404),
            get("/?animal=dog").status(404),
            get("/?animal=whaledolphin").status(404),
            get("/").status(404),
            get("/path1?animal=whale").backend("echo-v1"),
            get("/?animal=whale")
                .header("version", "one")
                .backend("echo-v2"),
            get("/path3?animal=shark").backend("echo-v1"),
            get("/path4?animal=kraken")
                .header("version", "three")
                .backend("echo-v1"),
            get("/?animal=shark").status(404),
            get("/path4?animal=kraken").status(404),
            get("/path5?animal=hydra").backend("echo-v1"),
        ]),
        // 1.10
        ConformanceTest::new(
            "MeshHTTPRouteRequestHeaderModifier",
            &["Mesh", "HTTPRoute"],
            &["httproute-request-header-modifier.yaml"],
        )
        .parallel(request_header_modifier_cases()),
        // 1.11
        ConformanceTest::new(
            "MeshHTTPRouteBackendRequestHeaderModifier",
            &[
                "Mesh",
                "HTTPRoute",
                "MeshHTTPRouteBackendRequestHeaderModification",
            ],
            &["httproute-request-header-modifier-backend.yaml"],
        )
        .parallel(request_header_modifier_cases()),
        // 1.12
        ConformanceTest::new(
            "MeshHTTPRouteRewritePath",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteRewritePath"],
            &["httproute-rewrite-path.yaml"],
        )
        .in_order(vec![
            get("/prefix/one/two")
                .backend("echo-v1")
                .backend_path("/one/two"),
            get("/strip-prefix/three")
                .backend("echo-v1")
                .backend_path("/three"),
            get("/strip-prefix").backend("echo-v1").backend_path("/"),
            get("/full/one/two").backend("echo-v1").backend_path("/one"),
            rewrite_with_headers(get("/full/rewrite-path-and-modify-headers/test"))
                .backend_path("/test"),
            rewrite_with_headers(get("/prefix/rewrite-path-and-modify-headers/one"))
                .backend_path("/prefix/one"),
        ]),
        // 1.13. The upstream test writes `/named` as the expected path of both cases; the
        // mesh harness does not check it, and strict mode checks the path each case was sent to.
        ConformanceTest::new(
            "MeshHTTPRouteNamedRule",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteNamedRouteRule"],
            &["httproute-named-rule.yaml"],
        )
        .parallel(vec![
            get("/named").backend("echo-v1").backend_path("/named"),
            get("/unnamed").backend("echo-v2").backend_path("/unnamed"),
        ]),
        // 1.14
        ConformanceTest::new(
            "MeshHTTPRouteRedirectHostAndStatus",
            &["Mesh", "HTTPRoute"],
            &["httproute-redirect-host-and-status.yaml"],
        )
        .parallel(vec![
            get("/hostname-redirect")
                .status(302)
                .redirect(RedirectExpect::any().host("example.org")),
            get("/host-and-status")
                .status(301)
                .redirect(RedirectExpect::any().host("example.org")),
        ]),
        // 1.15
        ConformanceTest::new(
            "MeshHTTPRouteRedirectPath",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteRedirectPath"],
            &["httproute-redirect-path.yaml"],
        )
        .parallel(vec![
            get("/original-prefix/lemon")
                .status(302)
                .redirect(RedirectExpect::any().path("/replacement-prefix/lemon")),
            get("/full/path/original")
                .status(302)
                .redirect(RedirectExpect::any().path("/full-path-replacement")),
            get("/path-and-host").status(302).redirect(
                RedirectExpect::any()
                    .host("example.org")
                    .path("/replacement-prefix"),
            ),
            get("/path-and-status")
                .status(301)
                .redirect(RedirectExpect::any().path("/replacement-prefix")),
            get("/full-path-and-host").status(302).redirect(
                RedirectExpect::any()
                    .host("example.org")
                    .path("/replacement-full"),
            ),
            get("/full-path-and-status")
                .status(301)
                .redirect(RedirectExpect::any().path("/replacement-full")),
        ]),
        // 1.16
        ConformanceTest::new(
            "MeshHTTPRouteRedirectPort",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteRedirectPort"],
            &["httproute-redirect-port.yaml"],
        )
        .parallel(vec![
            get("/port")
                .status(302)
                .redirect(RedirectExpect::any().port(8083)),
            get("/port-and-host")
                .status(302)
                .redirect(RedirectExpect::any().host("example.org").port(8083)),
            get("/port-and-status")
                .status(301)
                .redirect(RedirectExpect::any().port(8083)),
            get("/port-and-host-and-status")
                .status(302)
                .redirect(RedirectExpect::any().host("example.org").port(8083)),
        ]),
        // 1.17
        ConformanceTest::new(
            "MeshHTTPRouteSchemeRedirect",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteSchemeRedirect"],
            &["httproute-redirect-scheme.yaml"],
        )
        .parallel(vec![
            get("/scheme")
                .status(302)
                .redirect(RedirectExpect::any().scheme("https")),
            get("/scheme-and-host")
                .status(302)
                .redirect(RedirectExpect::any().scheme("https").host("example.org")),
            get("/scheme-and-status")
                .status(301)
                .redirect(RedirectExpect::any().scheme("https")),
            get("/scheme-and-host-and-status")
                .status(302)
                .redirect(RedirectExpect::any().scheme("https").host("example.org")),
        ]),
        // 1.18
        ConformanceTest::new(
            "MeshHTTPRoute303Redirect",
            &["Mesh", "HTTPRoute", "HTTPRoute303RedirectStatusCode"],
            &["httproute-303-redirect.yaml"],
        )
        .parallel(vec![get("/redirect")
            .status(303)
            .redirect(RedirectExpect::any().path("/redirect"))]),
        ConformanceTest::new(
            "MeshHTTPRoute307Redirect",
            &["Mesh", "HTTPRoute", "HTTPRoute307RedirectStatusCode"],
            &["httproute-307-redirect.yaml"],
        )
        .parallel(vec![get("/temporary")
            .status(307)
            .redirect(RedirectExpect::any().path("/temporary"))]),
        ConformanceTest::new(
            "MeshHTTPRoute308Redirect",
            &["Mesh", "HTTPRoute", "HTTPRoute308RedirectStatusCode"],
            &["httproute-308-redirect.yaml"],
        )
        .parallel(vec![get("/permanent")
            .status(308)
            .redirect(RedirectExpect::any().path("/permanent"))]),
        // 1.19
        ConformanceTest::new(
            "MeshHTTPRouteWeight",
            &["Mesh", "HTTPRoute"],
            &["httproute-weight.yaml"],
        )
        .in_order(vec![get("/")])
        .distribution(get("/").request, &[("echo-v1", 0.7), ("echo-v2", 0.3)]),
        // 1.20
        ConformanceTest::new(
            "MeshGRPCRouteWeight",
            &["Mesh", "GRPCRoute"],
            &["grpcroute-weight.yaml"],
        )
        .in_order(vec![Case::grpc(&v1(), "echo:7070", "Echo")])
        .distribution(
            Case::grpc(&v1(), "echo:7070", "Echo").request,
            &[("echo-v1", 0.7), ("echo-v2", 0.3)],
        ),
        // 1.21
        ConformanceTest::new(
            "MeshGRPCRouteRequestHeaderModifier",
            &["Mesh", "GRPCRoute"],
            &["grpcroute-request-header-modifier.yaml"],
        )
        .parallel(vec![
            Case::grpc(&v1(), "echo:7070", "Echo")
                .header("x-test-case", "set")
                .header("some-other-header", "this-header-should-be-set")
                .header("x-header-set", "this-value-should-be-overwritten")
                .backend("echo-v1")
                .sees("x-test-case", "set")
                .sees("some-other-header", "this-header-should-be-set")
                .sees("x-header-set", "set-overwrites-values"),
            Case::grpc(&v1(), "echo:7070", "Echo")
                .header("x-test-case", "add")
                .header("x-header-add", "this-value-should-be-appended")
                .backend("echo-v1")
                .sees("x-test-case", "add")
                .sees(
                    "x-header-add",
                    "this-value-should-be-appended,add-appends-values",
                ),
            Case::grpc(&v1(), "echo:7070", "Echo")
                .header("x-test-case", "remove")
                .header("x-header-remove", "this-should-be-removed")
                .backend("echo-v1")
                .sees("x-test-case", "remove")
                .not_sees("x-header-remove"),
            Case::grpc(&v2(), "echo:7070", "Echo")
                .header("x-test-case", "multi")
                .header("x-header-set-2", "set-header-2")
                .header("x-header-add-2", "add-header-2")
                .header("x-header-remove-2", "should-be-removed-2")
                .backend("echo-v2")
                .sees("x-test-case", "multi")
                .sees("x-header-set-1", "header-set-1")
                .sees("x-header-set-2", "header-set-2")
                .sees("x-header-add-1", "header-add-1")
                .sees("x-header-add-2", "add-header-2,header-add-2")
                .not_sees("x-header-remove-1")
                .not_sees("x-header-remove-2"),
        ]),
    ]
}

/// The cases of 1.10 and 1.11 (the same test body).
fn request_header_modifier_cases() -> Vec<Case> {
    vec![
        get("/set")
            .header("Some-Other-Header", "val")
            .backend("echo-v1")
            .sees("Some-Other-Header", "val")
            .sees("X-Header-Set", "set-overwrites-values"),
        get("/set")
            .header("Some-Other-Header", "val")
            .header("X-Header-Set", "some-other-value")
            .backend("echo-v1")
            .sees("Some-Other-Header", "val")
            .sees("X-Header-Set", "set-overwrites-values"),
        get("/add")
            .header("Some-Other-Header", "val")
            .backend("echo-v1")
            .sees("Some-Other-Header", "val")
            .sees("X-Header-Add", "add-appends-values"),
        get("/add")
            .header("Some-Other-Header", "val")
            .header("X-Header-Add", "some-other-value")
            .backend("echo-v1")
            .sees("Some-Other-Header", "val")
            .sees("X-Header-Add", "some-other-value,add-appends-values"),
        get("/remove")
            .header("X-Header-Remove", "val")
            .backend("echo-v1")
            .not_sees("X-Header-Remove"),
        get("/multiple")
            .header("X-Header-Set-2", "set-val-2")
            .header("X-Header-Add-2", "add-val-2")
            .header("X-Header-Remove-2", "remove-val-2")
            .header("Another-Header", "another-header-val")
            .backend("echo-v1")
            .sees("X-Header-Set-1", "header-set-1")
            .sees("X-Header-Set-2", "header-set-2")
            .sees("X-Header-Add-1", "header-add-1")
            .sees("X-Header-Add-2", "add-val-2,header-add-2")
            .sees("X-Header-Add-3", "header-add-3")
            .sees("Another-Header", "another-header-val")
            .not_sees("X-Header-Remove-1")
            .not_sees("X-Header-Remove-2"),
        get("/case-insensitivity")
            .header("x-header-set", "original-val-set")
            .header("x-header-add", "original-val-add")
            .header("x-header-remove", "original-val-remove")
            .header("Another-Header", "another-header-val")
            .backend("echo-v1")
            .sees("X-Header-Set", "header-set")
            .sees("X-Header-Add", "original-val-add,header-add")
            .sees("Another-Header", "another-header-val")
            .not_sees("x-header-remove")
            .not_sees("X-Header-Remove"),
    ]
}

/// The headers sent and checked by cases 5 and 6 of 1.12.
fn rewrite_with_headers(case: Case) -> Case {
    case.header("X-Header-Remove", "remove-val")
        .header("X-Header-Add-Append", "append-val-1")
        .header("X-Header-Set", "set-val")
        .backend("echo-v1")
        .sees("X-Header-Add", "header-val-1")
        .sees("X-Header-Add-Append", "append-val-1,header-val-2")
        .sees("X-Header-Set", "set-overwrites-values")
        .not_sees("X-Header-Remove")
}
