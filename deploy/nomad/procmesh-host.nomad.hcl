# One procmesh host on every Nomad client (a system job).
#
# Identity: the fleet-wide host certificate (issued without --name) in the Nomad Variable
# nomad/jobs/procmesh-host (keys ca_pem, cert_pem, key_pem, admin_token), rendered into the
# task's secrets dir; each host names itself after its Nomad node and proves that name with the
# node secret it keeps in its state dir, a host volume, so it survives reallocations.
#
# Client prerequisites (see README.md): the docker plugin with `allow_privileged = true`, and
#   host_volume "procmesh-host-state" { path = "/var/lib/procmesh/host" read_only = false }
job "procmesh-host" {
  type = "system"

  group "host" {
    network {
      mode = "host"
      # QUIC (UDP) on the node's address; advertised as is.
      port "quic" {
        static = 7700
      }
      # Admin HTTP; Nomad's checks come from the client agent at the node's address, so the
      # listener is on 0.0.0.0 with a bearer token.
      port "admin" {
        static = 7701
      }
    }

    volume "state" {
      type      = "host"
      source    = "procmesh-host-state"
      read_only = false
    }

    service {
      name     = "procmesh-host"
      provider = "nomad"
      port     = "admin"

      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
        # Nomad cannot put a Variable into a check header: this literal must equal the
        # admin_token Variable (set both when deploying, e.g. with a job variable).
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
          limit = 3
          grace = "30s"
        }
      }
    }

    task "host" {
      driver = "docker"

      # privileged: the default isolation (`namespaces`) creates user, mount, network, pid,
      # ipc and uts namespaces and a cgroup per action, which needs a writable cgroup mount,
      # an unmasked /proc and no default seccomp/AppArmor profile. Every action still runs
      # with no capabilities in its own user namespace.
      config {
        image        = "procmesh:latest"
        network_mode = "host"
        privileged   = true
        args = [
          "host",
          "--listen=0.0.0.0:7700",
          "--advertise=quic!${NOMAD_IP_quic}:7700",
          "--tls-dir=/secrets/tls",
          "--state-dir=/var/lib/procmesh/host",
          "--procs=2",
          "--admin-listen=0.0.0.0:7701",
          "--admin-token-file=/secrets/admin-token",
        ]
      }

      env {
        PROCMESH_NODE_NAME  = "${node.unique.name}"
        PROCMESH_LOG_FORMAT = "json"
      }

      volume_mount {
        volume      = "state"
        destination = "/var/lib/procmesh/host"
      }

      # PROCMESH_ORCHESTRATOR from Nomad's service catalogue: re-rendered (and the host
      # restarted) when the orchestrator moves.
      template {
        destination = "local/orchestrator.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{ range nomadService "procmesh-orchestrator" }}PROCMESH_ORCHESTRATOR=quic!{{ .Address }}:{{ .Port }},service.orchestrator
        {{ end }}
        EOT
      }

      template {
        destination = "secrets/tls/ca.pem"
        perms       = "0600"
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/procmesh-host\" }}{{ .ca_pem }}{{ end }}"
      }

      template {
        destination = "secrets/tls/cert.pem"
        perms       = "0600"
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/procmesh-host\" }}{{ .cert_pem }}{{ end }}"
      }

      template {
        destination = "secrets/tls/key.pem"
        perms       = "0600"
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/procmesh-host\" }}{{ .key_pem }}{{ end }}"
      }

      template {
        destination = "secrets/admin-token"
        perms       = "0600"
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/procmesh-host\" }}{{ .admin_token }}{{ end }}"
      }

      kill_timeout = "60s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
