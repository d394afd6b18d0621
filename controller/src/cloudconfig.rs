//! The cloud configuration (`--cloudconfig`, the cluster's azure.json) or, without a file, the environment
//! variables MIC reads instead (REFERENCE E, `pkg/cloudprovider`, `pkg/config/azureconfig.go`): which
//! subscription and resource group the VMs live in and how the controller authenticates to ARM. It only
//! parses and validates; `arm` uses the result.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// ARM of Azure's public cloud.
pub const PUBLIC_ARM: &str = "https://management.azure.com/";
/// Azure AD of Azure's public cloud.
pub const PUBLIC_AAD: &str = "https://login.microsoftonline.com/";

/// azure.json, the keys MIC reads plus endpoint overrides (`resourceManagerEndpoint`,
/// `activeDirectoryEndpoint`, `tokenAudience`) for other clouds and for mock-arm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AzureConfig {
    pub cloud: String,
    #[serde(rename = "tenantId")]
    pub tenant_id: String,
    #[serde(rename = "aadClientId")]
    pub client_id: String,
    #[serde(rename = "aadClientSecret")]
    pub client_secret: String,
    #[serde(rename = "subscriptionId")]
    pub subscription_id: String,
    #[serde(rename = "resourceGroup")]
    pub resource_group: String,
    #[serde(rename = "vmType")]
    pub vm_type: String,
    #[serde(rename = "useManagedIdentityExtension")]
    pub use_managed_identity_extension: bool,
    #[serde(rename = "userAssignedIdentityID")]
    pub user_assigned_identity_id: String,
    #[serde(rename = "resourceManagerEndpoint")]
    pub resource_manager_endpoint: String,
    #[serde(rename = "activeDirectoryEndpoint")]
    pub active_directory_endpoint: String,
    /// The resource ARM tokens are requested for; default `https://management.azure.com/` (also when the
    /// endpoint is overridden: mock-arm, like ARM, accepts only ARM's audiences).
    #[serde(rename = "tokenAudience")]
    pub token_audience: String,
}

/// How the controller gets its ARM token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// From the node's IMDS: the VM's system-assigned identity, or the user-assigned one with this client id.
    ManagedIdentity { client_id: Option<String> },
    /// Client-credentials grant against Azure AD.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: String,
    },
}

/// Why the cloud configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CloudConfigError {
    #[error("reading cloud config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing cloud config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cloud config: {0}")]
    Invalid(String),
}

impl AzureConfig {
    /// Reads azure.json.
    pub fn from_file(path: &Path) -> Result<Self, CloudConfigError> {
        let text = std::fs::read(path).map_err(|source| CloudConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| CloudConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The environment variables MIC reads when no file is given.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |k: &str| get(k).unwrap_or_default();
        AzureConfig {
            cloud: var("CLOUD"),
            tenant_id: var("TENANT_ID"),
            client_id: var("CLIENT_ID"),
            client_secret: var("CLIENT_SECRET"),
            subscription_id: var("SUBSCRIPTION_ID"),
            resource_group: var("RESOURCE_GROUP"),
            vm_type: var("VM_TYPE"),
            use_managed_identity_extension: var("USE_MSI").eq_ignore_ascii_case("true"),
            user_assigned_identity_id: var("USER_ASSIGNED_MSI_CLIENT_ID"),
            resource_manager_endpoint: var("RESOURCE_MANAGER_ENDPOINT"),
            active_directory_endpoint: var("ACTIVE_DIRECTORY_ENDPOINT"),
            token_audience: var("TOKEN_AUDIENCE"),
        }
    }

    /// Checks what the controller needs and says how it authenticates.
    pub fn credential(&self) -> Result<Credential, CloudConfigError> {
        if self.subscription_id.trim().is_empty() {
            return Err(CloudConfigError::Invalid(
                "subscriptionId is required".into(),
            ));
        }
        if !matches!(
            self.vm_type.to_ascii_lowercase().as_str(),
            "" | "standard" | "vmss"
        ) {
            return Err(CloudConfigError::Invalid(format!(
                "vmType {:?}: expected standard or vmss",
                self.vm_type
            )));
        }
        if self.use_managed_identity_extension {
            let id = self.user_assigned_identity_id.trim();
            return Ok(Credential::ManagedIdentity {
                client_id: (!id.is_empty()).then(|| id.to_owned()),
            });
        }
        if self.client_id.is_empty() || self.client_secret.is_empty() || self.tenant_id.is_empty() {
            return Err(CloudConfigError::Invalid(
                "without useManagedIdentityExtension, aadClientId, aadClientSecret and tenantId are required"
                    .into(),
            ));
        }
        Ok(Credential::ClientSecret {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            secret: self.client_secret.clone(),
        })
    }

    /// ARM's base URL (trailing slash removed): the override, else the public cloud's. Other named clouds
    /// need the override (imds-controller does not carry the sovereign clouds' endpoint tables).
    pub fn arm_endpoint(&self) -> Result<String, CloudConfigError> {
        self.endpoint(&self.resource_manager_endpoint, PUBLIC_ARM)
    }

    /// Azure AD's base URL (for the client-secret grant).
    pub fn aad_endpoint(&self) -> Result<String, CloudConfigError> {
        self.endpoint(&self.active_directory_endpoint, PUBLIC_AAD)
    }

    fn endpoint(&self, explicit: &str, public: &str) -> Result<String, CloudConfigError> {
        let chosen = if !explicit.trim().is_empty() {
            explicit.trim()
        } else if self.cloud.is_empty() || self.cloud.eq_ignore_ascii_case("AzurePublicCloud") {
            public
        } else {
            return Err(CloudConfigError::Invalid(format!(
                "cloud {:?}: set resourceManagerEndpoint and activeDirectoryEndpoint",
                self.cloud
            )));
        };
        Ok(chosen.trim_end_matches('/').to_owned())
    }

    /// The resource ARM tokens are requested for: `tokenAudience`, else public ARM's (with the trailing
    /// slash, as MIC asks).
    pub fn arm_resource(&self) -> String {
        let explicit = self.token_audience.trim();
        if explicit.is_empty() {
            PUBLIC_ARM.to_owned()
        } else {
            explicit.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_aks_azure_json() {
        let c: AzureConfig = serde_json::from_str(
            r#"{"cloud":"AzurePublicCloud","tenantId":"t","aadClientId":"msi","aadClientSecret":"msi",
                "subscriptionId":"s","resourceGroup":"MC_rg","vmType":"vmss","useManagedIdentityExtension":true,
                "userAssignedIdentityID":"c1","location":"eastus","unknownKey":1}"#,
        )
        .expect("parses");
        assert_eq!(
            c.credential().expect("valid"),
            Credential::ManagedIdentity {
                client_id: Some("c1".into())
            }
        );
        assert_eq!(
            c.arm_endpoint().expect("public"),
            "https://management.azure.com"
        );
    }

    #[test]
    fn client_secret_and_overrides() {
        let mut c = AzureConfig::from_env(|k| {
            Some(
                match k {
                    "TENANT_ID" => "t",
                    "CLIENT_ID" => "c",
                    "CLIENT_SECRET" => "x",
                    "SUBSCRIPTION_ID" => "s",
                    "CLOUD" => "AzureChinaCloud",
                    _ => return None,
                }
                .to_owned(),
            )
        });
        assert!(matches!(
            c.credential(),
            Ok(Credential::ClientSecret { .. })
        ));
        assert!(c.arm_endpoint().is_err(), "other clouds need the override");
        c.resource_manager_endpoint = "https://127.0.0.1:8443/".into();
        assert_eq!(
            c.arm_endpoint().expect("override"),
            "https://127.0.0.1:8443"
        );
        assert_eq!(c.arm_resource(), PUBLIC_ARM);
        c.vm_type = "other".into();
        assert!(c.credential().is_err());
        assert!(AzureConfig::default().credential().is_err());
    }
}
