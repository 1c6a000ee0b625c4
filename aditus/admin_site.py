"""The admin site: django-otp's OTPAdminSite, with a login that needs no device choice for one device."""

from django_otp import devices_for_user
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite


class OneDeviceOTPAdminAuthenticationForm(OTPAdminAuthenticationForm):
    """Verify the code against the user's only confirmed device when no device was picked.

    django-otp requires an explicit device choice so that a code is never tried against (and counted as a
    failure on) several devices. With exactly one confirmed device there is nothing to choose, and asking a
    super-admin to pick it from a list that appears only after a failed first attempt is just friction.
    """

    def _verify_token(self, user, token, device=None):
        if device is None:
            devices = list(devices_for_user(user, confirmed=True))
            if len(devices) == 1:
                device = devices[0]
        return super()._verify_token(user, token, device)


class AditusAdminSite(OTPAdminSite):
    login_form = OneDeviceOTPAdminAuthenticationForm
    site_header = "aditus administration"
    site_title = "aditus"
    # aditus has no public site for "View site" to open (it led to a 404): no link.
    site_url = None
