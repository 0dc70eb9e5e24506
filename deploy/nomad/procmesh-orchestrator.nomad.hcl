# The procmesh orchestrator: one allocation (the journal has one writer), its state dir on a
# host volume, so the job stays on the client that holds the journal.
#
# TLS and the admin token come from the Nomad Variable nomad/jobs/procmesh-orchestrator (keys
# ca_pem, cert_pem, key_pem, admin_token). Client prerequisite (see README.md):
#   host_volume "procmesh-orchestrator-state" { path = "/var/lib/procmesh/orchestrator" read_only = false }
job "procmesh-orchestrator" {
  type = "service"

  group "orchestrator" {
    count = 1

    network {
      mode = "host"
      # QUIC (UDP) for hosts and clients.
      port "quic" {
        static = 7600
      }
      # Admin HTTP (health, metrics, API, dashboard), bearer token required off loopback.
      port "admin" {
        static = 7601
      }
    }

    volume "state" {
      type      = "host"
      source    = "procmesh-orchestrator-state"
      read_only = false
    }

    # Hosts find the orchestrator through this service (see procmesh-host.nomad.hcl).
    service {
      name     = "procmesh-orchestrator"
      provider = "nomad"
      port     = "quic"
    }

    service {
      name     = "procmesh-orchestrator-admin"
      provider = "nomad"
      port     = "admin"

      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
        # Must equal the admin_token Variable (Nomad cannot read it into a header).
        header {
          Authorization = ["Bearer REPLACE-WITH-THE-ADMIN-TOKEN"]
        }
      }

      check {
        name     = "alive"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
        header {
          Authorization = ["Bearer REPLACE-WITH-THE-ADMIN-TOKEN"]
        }
        check_restart {
          limit = 6
          grace = "60s"
        }
      }
    }

    task "orchestrator" {
      driver = "docker"

      # No privileges: it runs as the image's user procmesh.
      config {
        image        = "procmesh:latest"
        network_mode = "host"
        args = [
          "orchestrator",
          "--listen=0.0.0.0:7600",
          "--advertise=quic!${NOMAD_IP_quic}:7600",
          "--tls-dir=/secrets/tls",
          "--state-dir=/var/lib/procmesh/orchestrator",
          "--admin-listen=0.0.0.0:7601",
          "--admin-token-file=/secrets/admin-token",
        ]
      }

      user = "65532"

      env {
        PROCMESH_LOG_FORMAT = "json"
      }

      volume_mount {
        volume      = "state"
        destination = "/var/lib/procmesh/orchestrator"
      }

      template {
        destination = "secrets/tls/ca.pem"
        perms       = "0600"
        uid         = 65532
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/procmesh-orchestrator\" }}{{ .ca_pem }}{{ end }}"
      }

      template {
        destination = "secrets/tls/cert.pem"
        perms       = "0600"
        uid         = 65532
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/procmesh-orchestrator\" }}{{ .cert_pem }}{{ end }}"
      }

      template {
        destination = "secrets/tls/key.pem"
        perms       = "0600"
        uid         = 65532
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/procmesh-orchestrator\" }}{{ .key_pem }}{{ end }}"
      }

      template {
        destination = "secrets/admin-token"
        perms       = "0600"
        uid         = 65532
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/procmesh-orchestrator\" }}{{ .admin_token }}{{ end }}"
      }

      kill_timeout = "30s"

      resources {
        cpu    = 1000
        memory = 1024
      }
    }
  }
}
