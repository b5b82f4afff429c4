// /docs: Swagger UI (served by this process from the swagger-ui-bundle package) on the
// committed spec; the API key the forecast page stored in this tab is sent with every call.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const key = sessionStorage.getItem("mmf-api-key") || "";
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    requestInterceptor: (request) => {
      if (key && !request.headers["X-API-Key"]) request.headers["X-API-Key"] = key;
      return request;
    },
  });
});
